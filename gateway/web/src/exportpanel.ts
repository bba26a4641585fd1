// Export: the whole map, or the linked table's rows, as CSV, JSON Lines or Parquet
// (row, coordinates, cluster and label, with or without the dataset's columns), streamed
// from ExportProjection and saved as a download.

import { projection as projectionApi, withAuthRetry } from "./api";
import { formatBytes, h } from "./dom";
import { ExportFormat } from "./gen/embedviz/v1/projection_pb";
import type { MapContext } from "./mapcontext";

type ExportNeeds = Pick<MapContext, "projectionName" | "columns" | "hooks" | "onError" | "clearError">;

/** The file an export is saved as: the map's id, "-selection-N" for some rows, the format's extension. */
export function exportFilename(projectionName: string, rows: number, format: ExportFormat): string {
  return `${projectionName.split("/").slice(-1)[0]}${rows ? `-selection-${rows}` : ""}.${extensionOf(format)}`;
}

const extensionOf = (format: ExportFormat) => (format === ExportFormat.JSONL ? "jsonl" : format === ExportFormat.PARQUET ? "parquet" : "csv");

export class ExportPanel {
  private readonly format = h("select", { id: "export-format", "data-testid": "export-format", "aria-label": "Export format" }, h("option", { value: String(ExportFormat.CSV) }, "CSV"), h("option", { value: String(ExportFormat.JSONL) }, "JSON Lines"), h("option", { value: String(ExportFormat.PARQUET) }, "Parquet"));
  private readonly withColumns = h("input", { id: "export-columns", "data-testid": "export-columns", type: "checkbox", checked: true });
  private readonly all = h("button", { id: "export-all-button", "data-testid": "export-all-button", type: "button", class: "secondary" }, "Export all");
  private readonly these = h("button", { id: "export-selection-button", "data-testid": "export-selection-button", type: "button", class: "secondary", disabled: true }, "Export these rows");
  private readonly status = h("span", { id: "export-status", "data-testid": "export-status", class: "muted" });

  /** The controls, for the linked table's tool row. */
  readonly controls: Node[] = [this.format, h("label", { class: "inline", title: "Add the dataset's columns to row, coordinates, cluster and label" }, this.withColumns, " with columns"), this.these, this.all, this.status];

  /** `linkedRows` gives the rows "Export these rows" saves. */
  connect(ctx: ExportNeeds, linkedRows: () => number[]): void {
    this.all.addEventListener("click", () => void this.run(ctx, [], this.all, linkedRows));
    this.these.addEventListener("click", () => void this.run(ctx, linkedRows(), this.these, linkedRows));
  }

  /** The linked table lists these rows now: "Export these rows" needs some. */
  rowsChanged(rows: number[]): void {
    this.these.disabled = rows.length === 0;
  }

  private async run(ctx: ExportNeeds, rows: number[], button: HTMLButtonElement, linkedRows: () => number[]): Promise<void> {
    const status = this.status;
    button.disabled = true;
    ctx.clearError();
    const format = Number(this.format.value) as ExportFormat;
    status.textContent = "exporting…";
    status.dataset.state = "running";
    try {
      const parts: Uint8Array[] = [];
      let bytes = 0;
      let type = "application/octet-stream";
      const columns = this.withColumns.checked ? ctx.columns.map((c) => c.name) : [];
      for await (const chunk of withAuthRetry(() => projectionApi.exportProjection({ name: ctx.projectionName, format, columns, rowIndexes: rows.map(BigInt) }))) {
        parts.push(chunk.data);
        bytes += chunk.data.length;
        if (chunk.contentType) type = chunk.contentType;
        status.textContent = `exporting… ${formatBytes(bytes)}`;
      }
      const blob = new Blob(parts as BlobPart[], { type });
      const filename = exportFilename(ctx.projectionName, rows.length, format);
      const url = URL.createObjectURL(blob);
      const a = h("a", { href: url, download: filename, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
      status.textContent = `saved ${filename} (${formatBytes(bytes)})`;
      status.dataset.state = "done";
      ctx.hooks.lastExport = { filename, bytes, text: format === ExportFormat.PARQUET ? "" : new TextDecoder().decode(await blob.arrayBuffer()).slice(0, 200_000) };
    } catch (err) {
      status.textContent = "export failed";
      status.dataset.state = "error";
      ctx.onError(err);
    } finally {
      button.disabled = button === this.these ? linkedRows().length === 0 : false;
    }
  }
}
