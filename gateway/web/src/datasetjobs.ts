// What the workspace knows of a dataset's embeddings and their maps, and what the centre
// of the workspace shows when nothing is open yet. Plain TypeScript, no DOM and no API:
// the panels render from it, the job follower changes it, and it is tested in Node.

import type { Embedding } from "./gen/embedviz/v1/embedding_pb";
import { JobState } from "./gen/embedviz/v1/job_pb";
import { ProjectionMethod, type Projection } from "./gen/embedviz/v1/projection_pb";

export const newestFirst = <T extends { createTime?: { seconds: bigint } }>(a: T, b: T) => Number((b.createTime?.seconds ?? 0n) - (a.createTime?.seconds ?? 0n));

/** "running", "succeeded", …: the word the lists show and their data-state carries. */
export const stateWord = (s: JobState | undefined) => JobState[s ?? 0]?.toLowerCase() ?? "";

const ended = (s: JobState | undefined) => s === JobState.SUCCEEDED || s === JobState.FAILED || s === JobState.CANCELLED;
const succeeded = (x: { job?: { state: JobState } }) => x.job?.state === JobState.SUCCEEDED;
export const running = (x: { job?: { state: JobState } }) => !ended(x.job?.state);

/** The embedding a map belongs to: its resource name up to "/projections/". */
export const embeddingOfMap = (mapName: string) => mapName.split("/projections/")[0];

// ---------- labels ----------

/** The option in the map form's embedding picker. */
export const embeddingChoiceLabel = (e: Embedding) => `${e.textColumns.join(", ")}${e.template ? ` (${e.template})` : ""} · ${e.model || "default model"}`;

/** What an embedding is, in the maps list and its delete question. */
export const embeddingLabel = (e: Embedding) => `${e.textColumns.join(", ")} · ${e.model || "default model"}`;

/** A map's pill: its method, and its state until it is done. */
export const mapPillLabel = (p: Projection) => `${ProjectionMethod[p.method] ?? "map"}${p.job?.state === JobState.SUCCEEDED ? "" : ` (${stateWord(p.job?.state)})`}`;

/** The map switcher's options: method, view and, when there are several, a number (oldest #1). */
export function switchLabels(maps: Projection[]): string[] {
  return maps.map((p, i) => `${ProjectionMethod[p.method] ?? "map"} ${p.dimensions === 3 ? "3-D" : "2-D"}${maps.length > 1 ? ` #${maps.length - i}` : ""}`);
}

// ---------- the embeddings and their maps ----------

export interface EmbeddingMaps {
  embedding: Embedding;
  /** Its maps, newest first. */
  maps: Projection[];
}

/** The dataset's embeddings and their maps, as the lists show them (newest first). */
export class DatasetJobs {
  private readonly embeddings = new Map<string, Embedding>();
  private readonly maps = new Map<string, Projection[]>();

  embedding(name: string): Embedding | undefined {
    return this.embeddings.get(name);
  }

  setEmbedding(e: Embedding): void {
    this.embeddings.set(e.name, e);
  }

  deleteEmbedding(name: string): void {
    this.embeddings.delete(name);
    this.maps.delete(name);
  }

  mapsOf(embedding: string): Projection[] {
    return this.maps.get(embedding) ?? [];
  }

  setMaps(embedding: string, maps: Projection[]): void {
    this.maps.set(embedding, [...maps].sort(newestFirst));
  }

  /** Adds a map or replaces the one of the same name. */
  setMap(embedding: string, map: Projection): void {
    this.setMaps(embedding, [...this.mapsOf(embedding).filter((p) => p.name !== map.name), map]);
  }

  deleteMap(embedding: string, name: string): void {
    this.maps.set(embedding, this.mapsOf(embedding).filter((p) => p.name !== name));
  }

  /** Every embedding with its maps, newest first. */
  list(): EmbeddingMaps[] {
    return [...this.embeddings.values()].sort(newestFirst).map((embedding) => ({ embedding, maps: this.mapsOf(embedding.name) }));
  }

  /** Embeddings a map can be made of, newest first. */
  finishedEmbeddings(): Embedding[] {
    return [...this.embeddings.values()].filter(succeeded).sort(newestFirst);
  }

  /** Every finished map of the dataset, 2-D and 3-D, newest first. */
  finishedMaps(): Projection[] {
    return [...this.maps.values()].flat().filter(succeeded).sort(newestFirst);
  }
}

// ---------- the centre ----------

export type CentreChoice =
  | { kind: "open"; embedding: Embedding; projection: Projection }
  /** A job is running: its progress is in the centre already. */
  | { kind: "running" }
  | { kind: "failed"; text: string; retry: { embedding: Embedding } | { projection: Projection } }
  | { kind: "empty"; text: string };

/** "The map failed: <why>" for a failed job. */
export const failedText = (what: "map" | "embedding", job: { error: string } | undefined) => `The ${what} failed: ${job?.error || "no reason given"}`;

/**
 * What the workspace shows once it knows the dataset's jobs: the linked map (`linked`,
 * "" for none), else the newest finished one; else running jobs' progress; else what
 * failed last with a retry, or what to do next. A linked map that does not exist throws.
 */
export function chooseCentre(embeddings: Embedding[], mapsOf: (embedding: string) => Projection[], linked: string): CentreChoice {
  const all = embeddings.flatMap((e) => mapsOf(e.name).map((p) => ({ e, p }))).sort((a, b) => newestFirst(a.p, b.p));
  const link = linked ? all.find(({ p }) => p.name === linked) : undefined;
  if (linked && !link) throw new Error(`map ${linked} not found`);
  const toOpen = link ? (succeeded(link.p) ? link : undefined) : all.find(({ p }) => succeeded(p));
  if (toOpen) return { kind: "open", embedding: toOpen.e, projection: toOpen.p };
  if (embeddings.some(running) || all.some(({ p }) => running(p))) return { kind: "running" };
  const last = link?.p ?? all[0]?.p;
  if (last && last.job?.state === JobState.FAILED) return { kind: "failed", text: failedText("map", last.job), retry: { projection: last } };
  const newest = embeddings[0];
  if (newest?.job?.state === JobState.FAILED) return { kind: "failed", text: failedText("embedding", newest.job), retry: { embedding: newest } };
  if (embeddings.some(succeeded)) return { kind: "empty", text: "No map yet: choose a method and create one in the Data & jobs panel." };
  return { kind: "empty", text: "No map yet. Choose the text to embed in the Data & jobs panel and start embedding." };
}

/** The centre after a job that did not succeed ends while no map is open. */
export function afterFailedJob(what: "map" | "embedding", job: { state: JobState; error: string } | undefined): { kind: "empty" | "failed"; text: string } {
  if (job?.state === JobState.CANCELLED) {
    return { kind: "empty", text: what === "map" ? "The map was cancelled. Create one from the Data & jobs panel." : "The embedding was cancelled. Start it again from the Data & jobs panel." };
  }
  return { kind: "failed", text: failedText(what, job) };
}
