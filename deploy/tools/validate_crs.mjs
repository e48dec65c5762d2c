// Validates custom resources against the CRD schemas shipped in @kubernetes-models packages
// (required fields, types, enums; not unknown fields, not trigger metadata keys: check_deploy does those).
// Usage: node validate_crs.mjs <node_modules dir>  < [{"file": ..., "doc": {...}}, ...]  (JSON on stdin)
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import path from "node:path";

const modules = process.argv[2];
const MODELS = {
  "keda.sh/v1alpha1/ScaledObject": "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject.js",
  "keda.sh/v1alpha1/TriggerAuthentication": "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication.js",
  "monitoring.coreos.com/v1/PodMonitor": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor.js",
  "monitoring.coreos.com/v1/ServiceMonitor": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor.js",
  "monitoring.coreos.com/v1/PrometheusRule": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule.js",
};

const items = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const { file, doc } of items) {
  const key = `${doc.apiVersion}/${doc.kind}`;
  const rel = MODELS[key];
  if (!rel) {
    console.log(`${file}: no model for ${key}`);
    failed++;
    continue;
  }
  const mod = await import(pathToFileURL(path.join(modules, rel)).href);
  const Model = mod[doc.kind];
  try {
    new Model(doc).validate();
    console.log(`${file}: ${key} ${doc.metadata?.name} valid`);
  } catch (err) {
    console.log(`${file}: ${key} ${doc.metadata?.name} INVALID: ${err.message}`);
    failed++;
  }
}
console.log(`${items.length - failed} of ${items.length} custom resources valid`);
process.exit(failed ? 1 : 0);
