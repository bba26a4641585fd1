// A dataset's rows as a table: pages (page tokens), sorting by a column, substring search.

import { ingest } from "./api";
import { formatCount, h } from "./dom";
import type { Value } from "@bufbuild/protobuf/wkt";
import type { Row } from "./gen/embedviz/v1/ingest_pb";

export function valueText(v: Value | undefined): string {
  const kind = v?.kind;
  switch (kind?.case) {
    case "stringValue":
      return kind.value;
    case "numberValue":
      return String(kind.value);
    case "boolValue":
      return kind.value ? "true" : "false";
    case "listValue":
    case "structValue":
      return JSON.stringify(kind.value);
    default:
      return "";
  }
}

/** The plain JS value of a cell (null for null), for templates and colouring. */
export function valueOf(v: Value | undefined): string | number | boolean | null {
  const kind = v?.kind;
  switch (kind?.case) {
    case "stringValue":
    case "numberValue":
    case "boolValue":
      return kind.value;
    case "listValue":
    case "structValue":
      return JSON.stringify(kind.value);
    default:
      return null;
  }
}

/** Renders rows into a <table> with the given id; cells are clipped, full text in title. */
export function rowsTable(id: string, columns: string[], rows: Row[], opts: { indexHeader?: string; sortable?: (th: HTMLElement, column: string) => void } = {}): HTMLTableElement {
  const head = h("tr", {}, h("th", { class: "index" }, opts.indexHeader ?? "#"), ...columns.map((c) => {
    const th = h("th", { "data-column": c }, c);
    opts.sortable?.(th, c);
    return th;
  }));
  const body = rows.map((r) =>
    h(
      "tr",
      { "data-testid": `${id}-row`, "data-row": String(r.index) },
      h("td", { class: "index" }, String(r.index)),
      ...r.values.map((v) => {
        const text = valueText(v);
        return h("td", { title: text.length > 80 ? text : null, class: v.kind.case === "nullValue" ? "null" : null }, text.length > 160 ? `${text.slice(0, 160)}…` : v.kind.case === "nullValue" ? "null" : text);
      }),
    ),
  );
  return h("table", { class: "grid rows", id, "data-testid": id }, h("thead", {}, head), h("tbody", {}, ...body));
}

const PAGE_SIZE = 25;

/** The data table of a dataset, built into `host`. */
export function dataTable(host: HTMLElement, datasetName: string, signal: AbortSignal, onError: (err: unknown) => void): void {
  const search = h("input", { id: "rows-search", "data-testid": "rows-search", type: "search", placeholder: "Search text columns…" });
  const prev = h("button", { id: "rows-prev", "data-testid": "rows-prev", type: "button", class: "secondary", disabled: true }, "‹ Previous");
  const next = h("button", { id: "rows-next", "data-testid": "rows-next", type: "button", class: "secondary", disabled: true }, "Next ›");
  const info = h("span", { id: "rows-info", "data-testid": "rows-info", class: "muted" }, "loading…");
  const tableHost = h("div", { class: "table-scroll", id: "rows-table-host" });
  host.replaceChildren(h("div", { class: "row table-tools" }, search, prev, next, info), tableHost);

  let orderBy = "";
  let filter = "";
  // tokens[i] is the page token of page i (page 0 has none).
  let tokens: string[] = [""];
  let page = 0;
  let seq = 0;

  const load = async () => {
    const mine = ++seq;
    info.textContent = "loading…";
    try {
      const res = await ingest.listRows({ parent: datasetName, pageSize: PAGE_SIZE, pageToken: tokens[page], orderBy, filter }, { signal });
      if (mine !== seq) return;
      tokens[page + 1] = res.nextPageToken;
      const [column, dir] = orderBy.split(" ");
      const table = rowsTable("data-table", res.columns, res.rows, {
        sortable: (th, c) => {
          th.classList.add("sortable");
          th.title = "Sort by this column";
          if (c === column) {
            th.dataset.sort = dir === "desc" ? "desc" : "asc";
            th.append(dir === "desc" ? " ▼" : " ▲");
          }
          th.addEventListener("click", () => {
            orderBy = c !== column ? c : dir === "desc" ? "" : `${c} desc`;
            restart();
          });
        },
      });
      tableHost.replaceChildren(table);
      const total = Number(res.totalSize);
      const first = page * PAGE_SIZE;
      info.textContent = res.rows.length
        ? `rows ${formatCount(first + 1)}–${formatCount(first + res.rows.length)} of ${formatCount(total)}${filter ? ` matching “${filter}”` : ""}`
        : filter ? `no rows match “${filter}”` : "no rows";
      info.dataset.total = String(total);
      info.dataset.page = String(page);
      prev.disabled = page === 0;
      next.disabled = !res.nextPageToken;
    } catch (err) {
      if (mine !== seq || signal.aborted) return;
      info.textContent = "could not load rows";
      onError(err);
    }
  };
  const restart = () => {
    tokens = [""];
    page = 0;
    void load();
  };
  prev.addEventListener("click", () => {
    if (page > 0) page--;
    void load();
  });
  next.addEventListener("click", () => {
    if (!tokens[page + 1]) return;
    page++;
    void load();
  });
  let timer = 0;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = window.setTimeout(() => {
      filter = search.value.trim();
      restart();
    }, 250);
  });
  void load();
}
