// The figures that say how far a map can be trusted, shown over the map's corner: how
// faithful the layout is to the vectors, and (when the map was made with a label column)
// how often neighbours share a label and how far the clusters agree with the labels.
// Pure; tested in Node.

import type { ProjectionQuality } from "./gen/embedviz/v1/projection_pb";

const pct = (v: number) => `${Math.round(v * 100)} %`;

/** One line of a map's quality figures, "" when it has none (not finished, or older). */
export function qualityText(q: ProjectionQuality | undefined): string {
  if (!q || q.sampleRows <= 0n) return "";
  const parts = [`trustworthiness ${q.trustworthiness.toFixed(2)}`];
  if (q.labelAgreement >= 0) parts.push(`neighbours share the label ${pct(q.labelAgreement)} (chance ${pct(q.shuffledLabelAgreement)})`);
  if (q.clusterAgreement >= 0) parts.push(`clusters match the label: AMI ${q.clusterAgreement.toFixed(2)}`);
  return parts.join(" · ");
}

/** What the figures mean, for the tooltip. */
export function qualityHelp(q: ProjectionQuality | undefined): string {
  if (!q || q.sampleRows <= 0n) return "";
  const lines = [
    `Trustworthiness (1 is perfect): how far each point's ${q.neighbors} nearest points on the map are also near in the original vectors, over ${q.sampleRows} sampled rows.`,
  ];
  if (q.labelAgreement >= 0) lines.push(`Neighbours share the label: of each point's ${q.neighbors} nearest on the map, how many carry its label (${q.labelledRows} labelled rows); chance is the same with the labels shuffled.`);
  if (q.clusterAgreement >= 0) lines.push("AMI: adjusted mutual information of the clusters and the labels; 1 is the same grouping, 0 what chance gives.");
  return lines.join("\n");
}
