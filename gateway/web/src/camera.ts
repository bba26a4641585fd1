// The camera and the view state, both ways: a pan or zoom is written to the store once
// it settles (250 ms), and a camera in the store (a link, a restored view) moves the map.

import type { MapContext } from "./mapcontext";
import type { Camera, ViewState } from "./viewstate";

type CameraNeeds = Pick<MapContext, "store" | "scatterplot" | "points" | "drawLabels">;

/** True when two cameras differ by less than 1e-4 in every part. */
export function sameCamera(a: Camera, b: Camera): boolean {
  return Math.abs(a.x - b.x) < 1e-4 && Math.abs(a.y - b.y) < 1e-4 && Math.abs(a.distance - b.distance) < 1e-4;
}

export class CameraLink {
  private timer = 0;
  private applying = false;
  private readonly unwatch: () => void;

  constructor(private readonly ctx: CameraNeeds) {
    const { store, scatterplot } = ctx;
    scatterplot.subscribe("view", () => {
      if (this.applying) return;
      clearTimeout(this.timer);
      this.timer = window.setTimeout(() => store.update({ camera: this.now() }), 250);
    });
    this.unwatch = store.watch((s) => s.camera, (_, s) => void this.apply(s));
  }

  /** The camera as the scatterplot has it now. */
  now(): Camera {
    const target = this.ctx.scatterplot.get("cameraTarget") as unknown as number[];
    return { x: Number(target[0]), y: Number(target[1]), distance: Number(this.ctx.scatterplot.get("cameraDistance")) };
  }

  /** Moves the map to the view's camera (no move when it is there already). */
  async apply(s: ViewState): Promise<void> {
    if (!s.camera || sameCamera(this.now(), s.camera)) return;
    this.applying = true;
    try {
      await this.ctx.scatterplot.zoomToLocation([s.camera.x, s.camera.y], s.camera.distance, { transition: false });
    } finally {
      this.applying = false;
    }
    this.ctx.drawLabels();
  }

  /** Centres the map on a point, zooming in to 0.35 unless closer already. */
  centreOn(p: number): void {
    const { scatterplot, points } = this.ctx;
    const d = Math.min(Number(scatterplot.get("cameraDistance")) || 1, 0.35);
    void scatterplot.zoomToLocation([points.x[p], points.y[p]], d, { transition: true, transitionDuration: 400 });
  }

  dispose(): void {
    clearTimeout(this.timer);
    this.unwatch();
  }
}
