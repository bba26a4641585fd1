// Progress bars for the three kinds of job, fed by the Watch… streams.

import { withAuthRetry } from "./api";
import { h, formatBytes, formatCount, formatDuration } from "./dom";
import { JobState, type Job } from "./gen/embedviz/v1/job_pb";

export function isTerminal(state: JobState | undefined): boolean {
  return state === JobState.SUCCEEDED || state === JobState.FAILED || state === JobState.CANCELLED;
}

const STATE_WORDS: Record<number, string> = {
  [JobState.UNSPECIFIED]: "waiting",
  [JobState.PENDING]: "queued",
  [JobState.RUNNING]: "running",
  [JobState.SUCCEEDED]: "done",
  [JobState.FAILED]: "failed",
  [JobState.CANCELLED]: "cancelled",
};

const STATE_ATTR: Record<number, string> = {
  [JobState.UNSPECIFIED]: "pending",
  [JobState.PENDING]: "pending",
  [JobState.RUNNING]: "running",
  [JobState.SUCCEEDED]: "succeeded",
  [JobState.FAILED]: "failed",
  [JobState.CANCELLED]: "cancelled",
};

/** A labelled progress bar; `data-state` and `data-progress` let tests follow it. */
export class ProgressBar {
  readonly el: HTMLElement;
  private readonly bar: HTMLElement;
  private readonly text: HTMLElement;

  constructor(id: string, label: string) {
    this.bar = h("div", { class: "progress-fill" });
    this.text = h("div", { class: "progress-text", "data-testid": `${id}-text` });
    this.el = h(
      "div",
      { id, class: "progress", "data-testid": id, "data-state": "pending", "data-progress": "0", role: "progressbar", "aria-label": label },
      h("div", { class: "progress-label" }, label),
      h("div", { class: "progress-track" }, this.bar),
      this.text,
    );
  }

  set(fraction: number, text: string, state: string): void {
    const f = Math.max(0, Math.min(1, Number.isFinite(fraction) ? fraction : 0));
    this.bar.style.width = `${(f * 100).toFixed(1)}%`;
    this.el.dataset.progress = f.toFixed(4);
    this.el.dataset.state = state;
    this.el.setAttribute("aria-valuenow", String(Math.round(f * 100)));
    this.text.textContent = text;
  }

  /** Upload progress by bytes. */
  setBytes(done: number, total: number, rate: number): void {
    const eta = rate > 0 ? (total - done) / rate : 0;
    const parts = [`${formatBytes(done)} of ${formatBytes(total)}`];
    if (rate > 0) parts.push(`${formatBytes(rate)}/s`);
    if (eta > 0 && done < total) parts.push(`${formatDuration(eta)} left`);
    this.set(total > 0 ? done / total : 1, parts.join(" · "), done >= total ? "succeeded" : "running");
  }

  /** A job's state: rows done/total, rate, ETA, stage. */
  setJob(job: Job | undefined): void {
    if (!job) return;
    const done = Number(job.done), total = Number(job.total);
    const word = STATE_WORDS[job.state] ?? "running";
    const parts: string[] = [job.stage && job.stage !== word && !isTerminal(job.state) ? `${word}: ${job.stage}` : word];
    if (total > 0) parts.push(`${formatCount(done)} / ${formatCount(total)} rows`);
    else if (done > 0) parts.push(`${formatCount(done)} rows`);
    if (job.rate > 0 && !isTerminal(job.state)) parts.push(`${formatCount(Math.round(job.rate))} rows/s`);
    const eta = formatDuration(job.etaSeconds);
    if (eta && !isTerminal(job.state)) parts.push(`${eta} left`);
    if (job.state === JobState.FAILED && job.error) parts.push(job.error);
    const fraction = job.state === JobState.SUCCEEDED ? 1 : job.progress || (total > 0 ? done / total : 0);
    this.set(fraction, parts.join(" · "), STATE_ATTR[job.state] ?? "running");
  }
}

/**
 * Follows a Watch… stream until the job ends, reconnecting if the stream closes early
 * (the server sends the current state first, so a reconnect loses nothing).
 */
export async function followJob<T>(
  open: () => AsyncIterable<T>,
  jobOf: (msg: T) => Job | undefined,
  onUpdate: (msg: T) => void,
): Promise<T> {
  let last: T | undefined;
  for (let attempt = 0; attempt < 20; attempt++) {
    for await (const msg of withAuthRetry(open)) {
      last = msg;
      onUpdate(msg);
      if (isTerminal(jobOf(msg)?.state)) return msg;
    }
    await new Promise((r) => setTimeout(r, Math.min(5000, 250 * 2 ** attempt)));
  }
  if (last === undefined) throw new Error("the progress stream closed without sending anything");
  throw new Error("the progress stream kept closing before the job ended");
}

export { JobState };
