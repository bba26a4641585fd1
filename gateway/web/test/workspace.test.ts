import { create } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { chooseCentre, DatasetJobs, embeddingOfMap, mapPillLabel, switchLabels, afterFailedJob } from "../src/datasetjobs";
import { EmbeddingSchema, type Embedding } from "../src/gen/embedviz/v1/embedding_pb";
import { ColumnSchema } from "../src/gen/embedviz/v1/ingest_pb";
import { JobState } from "../src/gen/embedviz/v1/job_pb";
import { ProjectionMethod, ProjectionSchema, type Projection } from "../src/gen/embedviz/v1/projection_pb";

const DS = "projects/p/datasets/d";
const at = (seconds: number) => ({ seconds: BigInt(seconds), nanos: 0 });
const job = (state: JobState, error = "") => ({ state, error });

function emb(id: string, seconds: number, state: JobState, error = ""): Embedding {
  return create(EmbeddingSchema, { name: `${DS}/embeddings/${id}`, createTime: at(seconds), job: job(state, error), textColumns: ["title"], model: "mini" });
}

function map(e: Embedding, id: string, seconds: number, state: JobState, extra: Partial<Pick<Projection, "method" | "dimensions">> = {}, error = ""): Projection {
  return create(ProjectionSchema, { name: `${e.name}/projections/${id}`, createTime: at(seconds), job: job(state, error), method: ProjectionMethod.UMAP, dimensions: 2, ...extra });
}

/** The jobs as the workspace loads them: the embeddings newest first, each with its maps. */
function loaded(embeddings: Embedding[], maps: Projection[]): DatasetJobs {
  const jobs = new DatasetJobs();
  for (const e of embeddings) jobs.setEmbedding(e);
  for (const e of embeddings) jobs.setMaps(e.name, maps.filter((p) => embeddingOfMap(p.name) === e.name));
  return jobs;
}

const centreOf = (embeddings: Embedding[], maps: Projection[], linked = "") => chooseCentre(embeddings, (name) => loaded(embeddings, maps).mapsOf(name), linked);

describe("the maps list of a dataset", () => {
  const old = emb("old", 100, JobState.SUCCEEDED);
  const fresh = emb("fresh", 200, JobState.RUNNING);
  const first = map(old, "a", 110, JobState.SUCCEEDED);
  const second = map(old, "b", 120, JobState.SUCCEEDED, { method: ProjectionMethod.PCA, dimensions: 3 });

  it("lists embeddings and their maps newest first; only finished ones can be mapped or switched to", () => {
    const jobs = loaded([old, fresh], [first, second]);
    expect(jobs.list().map(({ embedding, maps }) => [embedding.name, maps.map((p) => p.name)])).toEqual([
      [fresh.name, []],
      [old.name, [second.name, first.name]],
    ]);
    expect(jobs.finishedEmbeddings()).toEqual([old]);
    expect(switchLabels(jobs.finishedMaps())).toEqual(["PCA 3-D #2", "UMAP 2-D #1"]);
  });

  it("a map that is followed replaces its older self; deleting an embedding drops its maps", () => {
    const jobs = loaded([old], [first]);
    const making = map(old, "c", 130, JobState.RUNNING);
    jobs.setMap(old.name, making);
    expect(mapPillLabel(jobs.mapsOf(old.name)[0])).toBe("UMAP (running)");
    jobs.setMap(old.name, { ...making, job: job(JobState.SUCCEEDED) } as Projection);
    expect(jobs.mapsOf(old.name).map((p) => [p.name, mapPillLabel(p)])).toEqual([
      [making.name, "UMAP"],
      [first.name, "UMAP"],
    ]);
    jobs.deleteMap(old.name, first.name);
    expect(jobs.mapsOf(old.name).map((p) => p.name)).toEqual([making.name]);
    jobs.deleteEmbedding(old.name);
    expect(jobs.list()).toEqual([]);
    expect(jobs.finishedMaps()).toEqual([]);
  });
});

describe("what the centre shows when the workspace opens", () => {
  const e = emb("e", 100, JobState.SUCCEEDED);

  it("the linked map, else the newest finished one", () => {
    const a = map(e, "a", 110, JobState.SUCCEEDED);
    const b = map(e, "b", 120, JobState.SUCCEEDED);
    expect(centreOf([e], [a, b])).toEqual({ kind: "open", embedding: e, projection: b });
    expect(centreOf([e], [a, b], a.name)).toEqual({ kind: "open", embedding: e, projection: a });
  });

  it("a link to a map that does not exist is an error", () => {
    expect(() => centreOf([e], [], `${e.name}/projections/gone`)).toThrow(`map ${e.name}/projections/gone not found`);
  });

  it("a running job keeps its progress in the centre, even when the link names it", () => {
    const making = map(e, "m", 110, JobState.RUNNING);
    expect(centreOf([e], [making], making.name)).toEqual({ kind: "running" });
    expect(centreOf([emb("r", 100, JobState.PENDING)], [])).toEqual({ kind: "running" });
  });

  it("a failed map or embedding shows its message with what Retry runs again", () => {
    const broken = map(e, "x", 110, JobState.FAILED, {}, "the fit was killed");
    expect(centreOf([e], [broken])).toEqual({ kind: "failed", text: "The map failed: the fit was killed", retry: { projection: broken } });
    const failed = emb("f", 200, JobState.FAILED);
    expect(centreOf([failed, e], [])).toEqual({ kind: "failed", text: "The embedding failed: no reason given", retry: { embedding: failed } });
  });

  it("otherwise what to do next", () => {
    expect(centreOf([e], [])).toEqual({ kind: "empty", text: "No map yet: choose a method and create one in the Data & jobs panel." });
    expect(centreOf([], [])).toEqual({ kind: "empty", text: "No map yet. Choose the text to embed in the Data & jobs panel and start embedding." });
    expect(centreOf([emb("c", 100, JobState.CANCELLED)], [])).toEqual({ kind: "empty", text: "No map yet. Choose the text to embed in the Data & jobs panel and start embedding." });
  });

  it("a job that ends without succeeding while no map is open", () => {
    expect(afterFailedJob("map", job(JobState.CANCELLED))).toEqual({ kind: "empty", text: "The map was cancelled. Create one from the Data & jobs panel." });
    expect(afterFailedJob("embedding", job(JobState.CANCELLED))).toEqual({ kind: "empty", text: "The embedding was cancelled. Start it again from the Data & jobs panel." });
    expect(afterFailedJob("embedding", job(JobState.FAILED, "out of memory"))).toEqual({ kind: "failed", text: "The embedding failed: out of memory" });
  });
});

// textpicker.ts reaches the API module, which reads the page's origin when loaded.
let picker: typeof import("../src/textpicker");
beforeAll(async () => {
  vi.stubGlobal("window", { location: new URL("http://localhost:8080/") });
  picker = await import("../src/textpicker");
});
afterAll(() => vi.unstubAllGlobals());

describe("the text to embed", () => {
  const column = (name: string, type: string, suggested = false) => create(ColumnSchema, { name, type, suggested });

  it("suggested columns come first and are checked; without any, the first text column is", () => {
    const cols = [column("id", "int64"), column("title", "string"), column("body", "large_string", true)];
    expect(picker.sortColumns(cols).map((c) => c.name)).toEqual(["body", "title", "id"]);
    expect(picker.preselectedColumns(cols)).toEqual(["body"]);
    expect(picker.preselectedColumns([column("id", "int64"), column("title", "utf8")])).toEqual(["title"]);
    expect(picker.preselectedColumns([column("id", "int64")])).toEqual([]);
  });

  it("the preview renders the first rows, or says why it cannot", () => {
    const rows = [{ title: "Lava", body: "hot" }, { title: "", body: "" }];
    expect(picker.previewTexts("", ["title", "body"], rows)).toEqual({ texts: ["Lava\nhot", "\n"], error: "" });
    expect(picker.previewTexts("{title}: {body}", [], rows)).toEqual({ texts: ["Lava: hot", ": "], error: "" });
    expect(picker.previewTexts("", [], rows).error).toBe("choose at least one text column, or write a template such as {title}: {body}");
    expect(picker.previewTexts("{nope}", [], rows)).toEqual({ texts: [], error: "the template uses {nope}, which is not a column of this dataset" });
  });

  it("column stats read as a person would say them", () => {
    const c = create(ColumnSchema, { name: "body", type: "string", nullCount: 12n, meanLength: 84.2, distinctRatio: 0.97 });
    expect(picker.columnStats(c, 1200)).toBe("12 nulls (1%) · avg 84 chars · 97% distinct");
    expect(picker.columnStats(create(ColumnSchema, { name: "id", type: "int64" }), 10)).toBe("no nulls");
  });
});
