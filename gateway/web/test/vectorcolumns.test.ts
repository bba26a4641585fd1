import { describe, expect, it } from "vitest";
import { shownColumns, vectorColumnChoices } from "../src/vectorcolumns";

describe("vectorColumnChoices", () => {
  it("offers lists of numbers first, then numeric columns, and nothing that holds text", () => {
    const columns = [
      { name: "title", type: "string" },
      { name: "vec", type: "list<item: float>" },
      { name: "json", type: "list<item: double>" },
      { name: "fixed", type: "fixed_size_list<item: float>[4]" },
      { name: "words", type: "list<item: string>" },
      { name: "x0", type: "double" },
      { name: "x1", type: "int64" },
      { name: "when", type: "timestamp[ms]" },
      { name: "price", type: "decimal128(10, 2)" },
    ];
    expect(vectorColumnChoices(columns)).toEqual({ lists: ["vec", "json", "fixed"], numbers: ["x0", "x1", "price"] });
  });
});

describe("shownColumns", () => {
  const columns = [{ name: "title" }, { name: "vec" }, { name: "group" }];
  it("keeps an embedding's text columns", () => {
    expect(shownColumns({ textColumns: ["title"], vectorColumns: [] }, columns)).toEqual(["title"]);
    expect(shownColumns({ textColumns: ["title"], vectorColumns: ["vec"] }, columns)).toEqual(["title"]);
  });
  it("shows the other columns of imported vectors without text columns", () => {
    expect(shownColumns({ textColumns: [], vectorColumns: ["vec"] }, columns)).toEqual(["title", "group"]);
  });
});
