// The workspace of a dataset: the map in the centre, panels around it (data and jobs on
// the left, legend/filters/details on the right, the linked table below), all rendered
// from one view store whose state the URL carries. Jobs of the dataset that are running
// when it opens are followed again (a reload loses nothing); a finished one is usable at
// once; a failed one shows its message and a Retry.
//
// This file only puts the parts together and loads what they show, in order: the frame
// and centre (workspaceframe.ts), the dataset's blocks (datasetpanel.ts), the embed and
// map forms (embedform.ts, textpicker.ts, mapform.ts), the maps list (mapslist.ts), the
// job follower (followjobs.ts) and the open map with its switcher (mapswitch.ts). What
// the lists and the centre show is decided in datasetjobs.ts, plain and tested.

import type { ScreenContext } from "./account";
import { embedding, ingest, projection } from "./api";
import { byId } from "./dom";
import { chooseCentre, DatasetJobs, newestFirst, running } from "./datasetjobs";
import { DatasetPanel } from "./datasetpanel";
import { EmbedForm } from "./embedform";
import { JobFollower } from "./followjobs";
import { Role } from "./gen/embedviz/v1/ingest_pb";
import { JobState } from "./jobs";
import { MapForm } from "./mapform";
import { MapsList } from "./mapslist";
import { MapSwitcher } from "./mapswitch";
import { dataTable } from "./table";
import { viewToHash, ViewStore, type ViewState } from "./viewstate";
import { WorkspaceFrame } from "./workspaceframe";

export interface WorkspaceContext extends ScreenContext {
  clearError: () => void;
  /** Registers what tears the screen down when the route changes. */
  onTeardown: (fn: () => void) => void;
}

export async function renderWorkspace(ctx: WorkspaceContext, initial: ViewState): Promise<void> {
  const { app, signal, act, showError, clearError } = ctx;
  const datasetName = initial.dataset;
  const projectName = initial.project;
  const store = new ViewStore(initial);
  // The URL follows the view (replaceState: no new history entry, no re-route).
  const unsync = store.subscribe((s) => {
    const hash = viewToHash(s);
    if (location.hash !== hash) history.replaceState(null, "", hash);
  });
  ctx.onTeardown(unsync);

  // ---------- the frame and the Data & jobs panel ----------
  const frame = new WorkspaceFrame(projectName, act);
  frame.mount(app);
  frame.centre.set("loading", "Loading…");
  const jobs = new DatasetJobs();
  // The forms' buttons work once the dataset is in and `follow` and `switcher` exist (below).
  const datasetPanel = new DatasetPanel({ datasetName, projectName, signal, act, frame });
  const embedForm = new EmbedForm(act, async (request) => {
    const emb = await embedding.createEmbedding({ parent: datasetName, embedding: request });
    await follow.embedding(emb);
  });
  const mapForm = new MapForm(act, async (embeddingName, request) => {
    const emb = jobs.embedding(embeddingName);
    if (!emb) throw new Error("embed the dataset first");
    const proj = await projection.createProjection({ parent: emb.name, projection: request });
    switcher.close();
    await follow.map(emb, proj);
  });
  const mapsList = new MapsList({ datasetName, jobs, act, canWrite: () => frame.canWrite(), openMap: () => switcher.current, onChange: () => refresh() });
  const refresh = () => {
    mapForm.render(jobs.finishedEmbeddings(), frame.canWrite());
    mapsList.render();
  };
  frame.dataPanel.append(datasetPanel.note, datasetPanel.importBlock, embedForm.el, mapForm.el, mapsList.el, datasetPanel.dangerBlock);

  ingest
    .getProject({ name: projectName }, { signal })
    .then((p) => {
      byId("project-link").textContent = p.displayName || p.name;
      if (p.role !== Role.VIEWER) return;
      for (const part of [datasetPanel, mapsList, embedForm, mapForm, frame]) part.readOnly();
    })
    .catch(() => {
      /* the crumb keeps its generic name */
    });

  // ---------- the dataset, once imported ----------
  const dataset = await datasetPanel.waitForImport(await ingest.getDataset({ name: datasetName }, { signal }));
  if (!dataset) return;
  datasetPanel.offerUpload();
  embedForm.picker.show(dataset);
  mapForm.setColumns(dataset.columns);
  embedForm.setColumns(dataset.columns);
  dataTable(frame.rowsHost, datasetName, signal, showError);
  embedForm.picker.loadPreview(datasetName, signal);
  await embedForm.loadModels(signal, showError);
  embedForm.enable(frame.canWrite());

  // ---------- embeddings, maps and their jobs ----------
  const switcher = new MapSwitcher({ store, datasetName, columns: dataset.columns, jobs, frame, onOpened: refresh, onError: showError, onClearError: clearError });
  ctx.onTeardown(() => switcher.dispose());
  const follow = new JobFollower({ datasetName, jobs, frame, embedForm, mapForm, maps: switcher, signal, act, onChange: refresh });

  // What exists: every embedding and its maps; running jobs are followed again.
  const embs = (await embedding.listEmbeddings({ parent: datasetName, pageSize: 100 }, { signal })).embeddings.sort(newestFirst);
  for (const e of embs) jobs.setEmbedding(e);
  await Promise.all(
    embs
      .filter((e) => e.job?.state === JobState.SUCCEEDED)
      .map(async (e) => jobs.setMaps(e.name, (await projection.listProjections({ parent: e.name, pageSize: 100 }, { signal })).projections)),
  );
  refresh();
  const wanted = initial.embedding ? jobs.embedding(initial.embedding) : undefined;
  if (wanted) {
    embedForm.picker.restore(wanted.textColumns, wanted.template);
    if (wanted.job?.state === JobState.SUCCEEDED) mapForm.choose(wanted.name);
  }
  for (const e of embs.filter(running)) void follow.embedding(e).catch((err) => signal.aborted || showError(err));
  for (const e of embs) for (const p of jobs.mapsOf(e.name).filter(running)) void follow.map(e, p).catch((err) => signal.aborted || showError(err));

  // Which map to show: the link's, else the newest finished one; else what to do next.
  const choice = chooseCentre(embs, (name) => jobs.mapsOf(name), initial.projection);
  if (choice.kind === "open") await switcher.open(choice.embedding, choice.projection);
  else if (choice.kind === "failed") frame.centre.set("failed", choice.text, follow.retry(choice.retry));
  else if (choice.kind === "empty") frame.centre.set("empty", choice.text);
}
