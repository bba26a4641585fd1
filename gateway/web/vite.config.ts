import { defineConfig } from "vitest/config";

// The edge serves dist/ at its own origin, so asset paths are relative to "/".
export default defineConfig({
  base: "/",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2022",
    sourcemap: true,
    chunkSizeWarningLimit: 800,
  },
  test: {
    include: ["test/**/*.test.ts"],
    environment: "node",
  },
});
