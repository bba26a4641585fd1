import { resolve } from "node:path";
import { defineConfig } from "vite";

// The map bench page (tests/bench/map.py, e2e/bench-map.mjs): built on its own, outside dist/.
export default defineConfig({
  root: __dirname,
  base: "./",
  build: { rollupOptions: { input: resolve(__dirname, "map.html") }, outDir: "../../../build/bench-map-web", emptyOutDir: true, target: "es2022", chunkSizeWarningLimit: 2000 },
});
