// The text an embedding reads from a row, by the same rules as services/embedding/texts.py:
// "{column}" is the row's value, "{{" and "}}" are literal braces, nulls are empty, and
// without a template the chosen columns' values are joined with a new line.

const PLACEHOLDER = /\{\{|\}\}|\{([^{}]*)\}/g;

/** Column names a template refers to, in order of first use; throws on an empty `{}`. */
export function templateColumns(template: string): string[] {
  const names: string[] = [];
  for (const m of template.matchAll(PLACEHOLDER)) {
    const name = m[1];
    if (name === undefined) continue;
    if (!name.trim()) throw new Error(`the template has an empty placeholder {}; name a column, e.g. {title}`);
    if (!names.includes(name)) names.push(name);
  }
  return names;
}

/** A cell as the backend turns it into text (Python's str()): null → "", true → "True", 2.0 → "2.0". */
export function cellText(value: unknown, columnType = ""): string {
  if (value === null || value === undefined) return "";
  if (typeof value === "string") return value;
  if (typeof value === "boolean") return value ? "True" : "False";
  if (typeof value === "number") {
    if (/float|double|decimal/i.test(columnType) && Number.isInteger(value)) return value.toFixed(1);
    return String(value);
  }
  return JSON.stringify(value);
}

/**
 * Renders one row's text. `row` maps column name → text of the cell (already through
 * cellText). Throws when the template names a column the row lacks.
 */
export function renderText(template: string, columns: string[], row: Record<string, string>): string {
  if (!template) return columns.map((c) => row[c] ?? "").join("\n");
  return template.replace(PLACEHOLDER, (token: string, name: string | undefined) => {
    if (token === "{{") return "{";
    if (token === "}}") return "}";
    const key = name ?? "";
    if (!(key in row)) throw new Error(`the template uses {${key}}, which is not a column of this dataset`);
    return row[key];
  });
}

/** The columns an embedding with this template and these checked columns reads. */
export function columnsForTemplate(template: string, checked: string[]): string[] {
  return template ? templateColumns(template) : checked;
}
