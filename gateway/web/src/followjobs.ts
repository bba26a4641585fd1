// Follows the dataset's embedding and map jobs to their end: started here, retried, or
// found running when the workspace opened (a reload loses nothing). Their progress shows
// in their form and, while no map is open, in the centre; a finished map opens, a failed
// job shows its message with a Retry.

import type { ScreenContext } from "./account";
import { embedding as embeddingApi, projection as projectionApi } from "./api";
import { afterFailedJob, embeddingOfMap, type DatasetJobs } from "./datasetjobs";
import { formatCount } from "./dom";
import type { EmbedForm } from "./embedform";
import type { Embedding } from "./gen/embedviz/v1/embedding_pb";
import type { Projection } from "./gen/embedviz/v1/projection_pb";
import { followJob, JobState } from "./jobs";
import type { MapForm } from "./mapform";
import type { MapSwitcher } from "./mapswitch";
import type { WorkspaceFrame } from "./workspaceframe";

export interface JobFollowerContext extends Pick<ScreenContext, "signal" | "act"> {
  datasetName: string;
  jobs: DatasetJobs;
  frame: Pick<WorkspaceFrame, "centre" | "setPanel" | "canWrite">;
  embedForm: Pick<EmbedForm, "bar" | "following" | "idle" | "noteOnBar">;
  mapForm: Pick<MapForm, "bar" | "following" | "idle" | "choose" | "focusCreate">;
  maps: Pick<MapSwitcher, "current" | "open">;
  /** The jobs changed: the lists render again. */
  onChange(): void;
}

export class JobFollower {
  private readonly ctx: JobFollowerContext;

  constructor(ctx: JobFollowerContext) {
    this.ctx = ctx;
  }

  /** No map is open: the centre shows the job. */
  private centreIsFree(): boolean {
    return !this.ctx.maps.current;
  }

  async embedding(emb: Embedding): Promise<void> {
    const { jobs, frame, embedForm, mapForm, act, signal } = this.ctx;
    const centre = frame.centre;
    jobs.setEmbedding(emb);
    this.ctx.onChange();
    embedForm.following(emb.job, frame.canWrite(), act, async () => (await embeddingApi.cancelEmbedding({ name: emb.name })).job);
    if (this.centreIsFree()) {
      centre.set("running", "Embedding the texts; the map comes next.");
      centre.bar.setJob(emb.job);
    }
    try {
      const last = await followJob(
        () => embeddingApi.watchEmbedding({ name: emb.name }, { signal }),
        (m) => m.embedding?.job,
        (m) => {
          embedForm.bar.setJob(m.embedding?.job);
          if (this.centreIsFree()) centre.bar.setJob(m.embedding?.job);
        },
      );
      const done = last.embedding ?? emb;
      jobs.setEmbedding(done);
      if (done.job?.state === JobState.SUCCEEDED) {
        if (done.truncatedCount > 0n) embedForm.noteOnBar(`${formatCount(done.truncatedCount)} texts cut at the model's limit`);
        mapForm.choose(done.name);
        this.ctx.onChange();
        mapForm.choose(done.name);
        if (this.centreIsFree()) centre.set("empty", "The embedding is ready: choose a method and create a map in the Data & jobs panel.");
        frame.setPanel("data", true);
        if (frame.canWrite()) mapForm.focusCreate();
      } else if (this.centreIsFree()) {
        const next = afterFailedJob("embedding", done.job);
        centre.set(next.kind, next.text, next.kind === "failed" ? this.retry({ embedding: done }) : undefined);
      }
      this.ctx.onChange();
    } finally {
      embedForm.idle(frame.canWrite());
    }
  }

  async map(emb: Embedding, proj: Projection): Promise<void> {
    const { jobs, frame, mapForm, act, signal } = this.ctx;
    const centre = frame.centre;
    jobs.setMap(emb.name, proj);
    this.ctx.onChange();
    mapForm.following(proj.job, frame.canWrite(), act, async () => (await projectionApi.cancelProjection({ name: proj.name })).job);
    if (this.centreIsFree()) {
      centre.set("running", "Making the map…");
      centre.bar.setJob(proj.job);
    }
    try {
      const last = await followJob(
        () => projectionApi.watchProjection({ name: proj.name }, { signal }),
        (m) => m.projection?.job,
        (m) => {
          mapForm.bar.setJob(m.projection?.job);
          if (this.centreIsFree()) centre.bar.setJob(m.projection?.job);
        },
      );
      const done = last.projection ?? proj;
      jobs.setMap(emb.name, done);
      this.ctx.onChange();
      if (done.job?.state === JobState.SUCCEEDED) await this.ctx.maps.open(emb, done);
      else if (this.centreIsFree()) {
        const next = afterFailedJob("map", done.job);
        centre.set(next.kind, next.text, next.kind === "failed" ? this.retry({ projection: done }) : undefined);
      }
    } finally {
      mapForm.idle();
    }
  }

  /** What Retry does for a failed job (nothing for a viewer): the same job again, followed. */
  retry(failed: { embedding: Embedding } | { projection: Projection }): (() => Promise<void>) | undefined {
    if (!this.ctx.frame.canWrite()) return undefined;
    const { datasetName, jobs } = this.ctx;
    if ("embedding" in failed) {
      const emb = failed.embedding;
      return async () => {
        const again = await embeddingApi.createEmbedding({ parent: datasetName, embedding: { model: emb.model, textColumns: emb.textColumns, template: emb.template } });
        void this.embedding(again);
      };
    }
    const proj = failed.projection;
    return async () => {
      const parent = embeddingOfMap(proj.name);
      const again = await projectionApi.createProjection({ parent, projection: { method: proj.method, dimensions: proj.dimensions || 2, clustering: proj.clustering, labelColumn: proj.labelColumn } });
      const emb = jobs.embedding(parent);
      if (emb) void this.map(emb, again);
    };
  }
}
