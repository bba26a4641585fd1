// What an embedding reads from each row: the text columns (suggested ones first and
// checked), an optional template, and a preview of the first rows' texts by the same rules
// the embedding service uses (template.ts).

import { errorMessage, ingest } from "./api";
import { formatCount, h } from "./dom";
import type { Column, Dataset } from "./gen/embedviz/v1/ingest_pb";
import { valueOf } from "./table";
import { cellText, columnsForTemplate, renderText } from "./template";

const isText = (c: Column) => /string|utf8|large_string/i.test(c.type);

/** Suggested columns first, then text columns, else the dataset's order. */
export function sortColumns(columns: Column[]): Column[] {
  return [...columns].sort((a, b) => Number(b.suggested) - Number(a.suggested) || Number(isText(b)) - Number(isText(a)));
}

/** The columns checked at first: the suggested ones, or when none is, the first text column. */
export function preselectedColumns(columns: Column[]): string[] {
  const sorted = sortColumns(columns);
  if (sorted.some((c) => c.suggested)) return sorted.filter((c) => c.suggested).map((c) => c.name);
  const firstText = sorted.find((c) => /string|utf8/i.test(c.type));
  return firstText ? [firstText.name] : [];
}

/** "12 nulls · avg 84 chars · 97% distinct" for the schema view. */
export function columnStats(c: Column, rows: number): string {
  const parts: string[] = [];
  const nulls = Number(c.nullCount);
  parts.push(nulls ? `${formatCount(nulls)} null${nulls === 1 ? "" : "s"}${rows ? ` (${Math.round((100 * nulls) / rows)}%)` : ""}` : "no nulls");
  if (c.meanLength) parts.push(`avg ${Math.round(c.meanLength)} chars`);
  if (c.distinctRatio) parts.push(`${Math.round(c.distinctRatio * 100)}% distinct`);
  return parts.join(" · ");
}

/** The preview's texts for a template and the checked columns, or why there are none. */
export function previewTexts(template: string, checked: string[], rows: Record<string, string>[]): { texts: string[]; error: string } {
  try {
    const cols = columnsForTemplate(template, checked);
    if (!cols.length) throw new Error("choose at least one text column, or write a template such as {title}: {body}");
    return { texts: rows.map((r) => renderText(template, cols, r)), error: "" };
  } catch (err) {
    return { texts: [], error: (err as Error).message };
  }
}

export class TextPicker {
  readonly columnsBox = h("div", { id: "column-list", "data-testid": "column-list", class: "columns" });
  readonly templateInput = h("input", { id: "template-input", "data-testid": "template-input", type: "text", placeholder: "optional, e.g. {title}: {body}" });
  readonly templateError = h("div", { id: "template-error", "data-testid": "template-error", class: "inline-error", hidden: true });
  readonly preview = h("ol", { id: "template-preview", "data-testid": "template-preview", class: "preview" });
  private rows: Record<string, string>[] = [];
  private columnTypes = new Map<string, string>();

  constructor() {
    this.templateInput.addEventListener("input", () => this.updatePreview());
    this.columnsBox.addEventListener("change", () => this.updatePreview());
  }

  /** The dataset's columns with their stats. */
  show(dataset: Dataset): void {
    const checked = new Set(preselectedColumns(dataset.columns));
    this.columnsBox.replaceChildren(
      ...sortColumns(dataset.columns).map((c) =>
        h(
          "label",
          { class: `column${c.suggested ? " suggested" : ""}`, "data-testid": "column-option", "data-column": c.name },
          h("input", { type: "checkbox", name: "text-column", value: c.name, "data-testid": "text-column", checked: checked.has(c.name) }),
          h("span", { class: "column-name" }, c.name),
          h("span", { class: "column-type" }, c.type),
          c.suggested ? h("span", { class: "badge" }, "suggested") : null,
          h("span", { class: "column-stats muted", "data-testid": "column-stats" }, columnStats(c, Number(dataset.rowCount))),
        ),
      ),
    );
    this.columnTypes = new Map(dataset.columns.map((c) => [c.name, c.type]));
  }

  /** Reads the first rows for the preview. */
  loadPreview(datasetName: string, signal: AbortSignal): void {
    const columnTypes = this.columnTypes;
    ingest
      .listRows({ parent: datasetName, pageSize: 3 }, { signal })
      .then((res) => {
        this.rows = res.rows.map((r) => Object.fromEntries(res.columns.map((c, i) => [c, cellText(valueOf(r.values[i]), columnTypes.get(c))])));
        this.updatePreview();
      })
      .catch((err) => {
        if (!signal.aborted) this.preview.replaceChildren(h("li", { class: "muted" }, `no preview: ${errorMessage(err)}`));
      });
  }

  checkedColumns(): string[] {
    return [...this.columnsBox.querySelectorAll<HTMLInputElement>("input[name=text-column]:checked")].map((i) => i.value);
  }

  /** What an embedding of the choice reads; throws when it reads nothing. */
  choice(): { textColumns: string[]; template: string } {
    const template = this.templateInput.value.trim();
    const textColumns = columnsForTemplate(template, this.checkedColumns());
    if (!textColumns.length) throw new Error("choose at least one text column to embed, or write a template");
    return { textColumns, template };
  }

  /** Puts back the columns and template of an embedding (the one a link names). */
  restore(textColumns: string[], template: string): void {
    for (const input of this.columnsBox.querySelectorAll<HTMLInputElement>("input[name=text-column]")) input.checked = textColumns.includes(input.value);
    this.templateInput.value = template;
    this.updatePreview();
  }

  private updatePreview(): void {
    const { texts, error } = previewTexts(this.templateInput.value, this.checkedColumns(), this.rows);
    this.templateError.hidden = !error;
    this.templateInput.removeAttribute("aria-invalid");
    if (error) {
      this.templateError.textContent = error;
      this.templateInput.setAttribute("aria-invalid", "true");
    }
    this.preview.replaceChildren(...texts.map((t) => h("li", { "data-testid": "template-preview-item" }, t === "" ? h("span", { class: "muted" }, "(empty text)") : t)));
    this.preview.dataset.count = String(texts.length);
  }
}
