import { describe, expect, it } from "vitest";
import { cellText, columnsForTemplate, renderText, templateColumns } from "../src/template";

describe("template texts (same rules as services/embedding/texts.py)", () => {
  it("fills placeholders and keeps literal braces", () => {
    expect(renderText("{title}: {body} {{x}}", [], { title: "T", body: "B" })).toBe("T: B {x}");
  });
  it("joins the columns with a new line when there is no template", () => {
    expect(renderText("", ["a", "b"], { a: "1", b: "" })).toBe("1\n");
  });
  it("lists the template's columns once, in order", () => {
    expect(templateColumns("{b} {a} {b} {{c}}")).toEqual(["b", "a"]);
    expect(columnsForTemplate("", ["x"])).toEqual(["x"]);
  });
  it("refuses empty placeholders and unknown columns", () => {
    expect(() => templateColumns("{ }")).toThrow(/empty placeholder/);
    expect(() => renderText("{nope}", [], { a: "1" })).toThrow(/nope/);
  });
  it("writes cells the way Python's str() does", () => {
    expect(cellText(null)).toBe("");
    expect(cellText(true)).toBe("True");
    expect(cellText(2, "double")).toBe("2.0");
    expect(cellText(2, "int64")).toBe("2");
  });
});
