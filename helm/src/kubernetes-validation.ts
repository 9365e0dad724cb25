/**
 * Checks rendered chart objects against the Kubernetes OpenAPI schemas, as compiled into
 * `kubernetes-models` (and `@kubernetes-models/prometheus-operator` for the Prometheus
 * Operator CRDs): types, required fields, enums and formats. Those schemas, like the API's
 * own, allow unknown fields, so names are checked here as well.
 */
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor';
import { PrometheusRule } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { StatefulSet } from 'kubernetes-models/apps/v1/StatefulSet';
import { Job } from 'kubernetes-models/batch/v1/Job';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Secret } from 'kubernetes-models/v1/Secret';
import { Service } from 'kubernetes-models/v1/Service';
import { ServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { Role } from 'kubernetes-models/rbac.authorization.k8s.io/v1/Role';
import { RoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/RoleBinding';

/** A rendered Kubernetes object, as far as this package reads it. */
export interface KubernetesObject {
  readonly apiVersion: string;
  readonly kind: string;
  readonly metadata: {
    readonly name: string;
    readonly namespace?: string;
    readonly labels?: Readonly<Record<string, string>>;
    readonly annotations?: Readonly<Record<string, string>>;
  };
  readonly [field: string]: unknown;
}

interface ValidatingModel {
  validate(): void;
}

/** The kinds the chart renders, by `apiVersion/kind`, with the model that validates each. */
const MODELS: Readonly<Record<string, new (data: never) => ValidatingModel>> = {
  'apps/v1/Deployment': Deployment,
  'apps/v1/StatefulSet': StatefulSet,
  'batch/v1/Job': Job,
  'v1/ConfigMap': ConfigMap,
  'v1/Secret': Secret,
  'v1/Service': Service,
  'v1/ServiceAccount': ServiceAccount,
  'networking.k8s.io/v1/NetworkPolicy': NetworkPolicy,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'rbac.authorization.k8s.io/v1/Role': Role,
  'rbac.authorization.k8s.io/v1/RoleBinding': RoleBinding,
  'monitoring.coreos.com/v1/ServiceMonitor': ServiceMonitor,
  'monitoring.coreos.com/v1/PrometheusRule': PrometheusRule,
};

/** The `apiVersion/kind` pairs {@link validateKubernetesObject} knows. */
export const VALIDATED_KINDS: readonly string[] = Object.keys(MODELS);

/** Kinds whose names become DNS labels (Services) or pod hostnames, so at most 63 characters. */
const DNS_LABEL_KINDS = new Set(['Service', 'StatefulSet', 'Deployment', 'Job']);
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;

/** A rendered object that the API server would refuse; the message names the object and the field. */
export class KubernetesValidationError extends Error {
  override readonly name = 'KubernetesValidationError';
  readonly code = 'INVALID_OBJECT';
}

/**
 * Throws {@link KubernetesValidationError} unless `object` passes its kind's OpenAPI schema
 * and Kubernetes' naming rules (names, label values).
 */
export function validateKubernetesObject(object: KubernetesObject): void {
  const id = `${object.kind}/${object.metadata.name}`;
  const key = `${object.apiVersion}/${object.kind}`;
  const Model = MODELS[key];
  if (Model === undefined) throw new KubernetesValidationError(`${id}: no schema for ${key}; add its model to kubernetes-validation.ts`);
  try {
    new Model(object as never).validate();
  } catch (error) {
    throw new KubernetesValidationError(`${id}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
  }
  const name = object.metadata.name;
  const maxName = DNS_LABEL_KINDS.has(object.kind) ? 63 : 253;
  if (name.length > maxName || !(maxName === 63 ? DNS_LABEL : DNS_SUBDOMAIN).test(name)) {
    throw new KubernetesValidationError(`${id}: metadata.name must be a DNS-1123 ${maxName === 63 ? 'label' : 'subdomain'} of at most ${maxName} characters`);
  }
  for (const labels of labelSets(object)) {
    for (const [labelKey, value] of Object.entries(labels.values)) {
      if (value.length > 63 || !LABEL_VALUE.test(value)) {
        throw new KubernetesValidationError(`${id}: ${labels.path}.${labelKey} must be a label value of at most 63 characters, got ${JSON.stringify(value)}`);
      }
    }
  }
}

/** The object's own labels and, for workloads, its pod template's. */
function labelSets(object: KubernetesObject): Array<{ path: string; values: Readonly<Record<string, string>> }> {
  const sets = [{ path: 'metadata.labels', values: object.metadata.labels ?? {} }];
  const spec = object.spec as { template?: { metadata?: { labels?: Record<string, string> } } } | undefined;
  const podLabels = spec?.template?.metadata?.labels;
  if (podLabels !== undefined) sets.push({ path: 'spec.template.metadata.labels', values: podLabels });
  return sets;
}
