// A tiny element builder: h("button", { id: "x", onclick }, "Label").

type Attrs = Record<string, string | number | boolean | null | undefined | ((ev: Event) => void)>;
type Child = Node | string | number | null | undefined | false;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (typeof value === "function") {
      el.addEventListener(key.replace(/^on/, ""), value as EventListener);
    } else if (key === "value" && "value" in el) {
      (el as HTMLInputElement).value = String(value);
    } else if (key === "checked" || key === "selected" || key === "disabled") {
      (el as unknown as Record<string, boolean>)[key] = Boolean(value);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`element #${id} is missing`);
  return el as T;
}

export function formatCount(n: number | bigint): string {
  return Number(n).toLocaleString("en-US");
}

export function formatBytes(n: number | bigint): string {
  const v = Number(n);
  if (v < 1024) return `${v} B`;
  if (v < 1024 * 1024) return `${(v / 1024).toFixed(1)} KiB`;
  if (v < 1024 ** 3) return `${(v / 1024 / 1024).toFixed(1)} MiB`;
  return `${(v / 1024 ** 3).toFixed(2)} GiB`;
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds <= 0) return "";
  if (seconds < 60) return `${Math.ceil(seconds)} s`;
  const m = Math.floor(seconds / 60), s = Math.round(seconds % 60);
  if (m < 60) return `${m} min ${s} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

/**
 * A button that asks once more before it acts: the first click turns it into the question
 * (which names what goes), a second click within 6 s runs `action`.
 */
export function confirmButton(attrs: Attrs, label: string, question: () => string, action: (button: HTMLButtonElement) => void): HTMLButtonElement {
  const b = h("button", { type: "button", class: "secondary", ...attrs }, label);
  let timer = 0;
  b.addEventListener("click", () => {
    if (b.dataset.armed !== "true") {
      b.dataset.armed = "true";
      b.textContent = question();
      b.classList.add("danger");
      timer = window.setTimeout(() => {
        delete b.dataset.armed;
        b.textContent = label;
        b.classList.remove("danger");
      }, 6000);
      return;
    }
    clearTimeout(timer);
    delete b.dataset.armed;
    b.textContent = label;
    b.classList.remove("danger");
    action(b);
  });
  return b;
}
