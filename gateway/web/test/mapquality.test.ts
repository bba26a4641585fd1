// A map's quality figures as the switcher shows them.
import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { ProjectionQualitySchema } from "../src/gen/embedviz/v1/projection_pb";
import { qualityHelp, qualityText } from "../src/mapquality";

describe("map quality", () => {
  it("shows trustworthiness, and label and cluster agreement when there was a label column", () => {
    const labelled = create(ProjectionQualitySchema, { trustworthiness: 0.912, sampleRows: 2000n, neighbors: 10, labelAgreement: 0.623, shuffledLabelAgreement: 0.2, labelledRows: 300n, clusterAgreement: 0.547 });
    expect(qualityText(labelled)).toBe("trustworthiness 0.91 · neighbours share the label 62 % (chance 20 %) · clusters match the label: AMI 0.55");
    expect(qualityHelp(labelled)).toContain("300 labelled rows");
    const plain = create(ProjectionQualitySchema, { trustworthiness: 0.85, sampleRows: 120n, neighbors: 10, labelAgreement: -1, shuffledLabelAgreement: -1, clusterAgreement: -1 });
    expect(qualityText(plain)).toBe("trustworthiness 0.85");
  });

  it("says nothing for a map without figures", () => {
    expect(qualityText(undefined)).toBe("");
    expect(qualityText(create(ProjectionQualitySchema, {}))).toBe("");
  });
});
