/**
 * The objects `helm template` rendered, looked up by kind and name with the types of
 * `kubernetes-models`, for tests that check what the chart means (rules, ports, probes).
 */
import type { IPrometheusRule } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule';
import type { IServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor';
import type { IDeployment } from 'kubernetes-models/apps/v1/Deployment';
import type { IStatefulSet } from 'kubernetes-models/apps/v1/StatefulSet';
import type { IJob } from 'kubernetes-models/batch/v1/Job';
import type { INetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy';
import type { IPodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import type { IRole } from 'kubernetes-models/rbac.authorization.k8s.io/v1/Role';
import type { IRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/RoleBinding';
import type { IConfigMap } from 'kubernetes-models/v1/ConfigMap';
import type { IPodTemplateSpec } from 'kubernetes-models/v1/PodTemplateSpec';
import type { ISecret } from 'kubernetes-models/v1/Secret';
import type { IService } from 'kubernetes-models/v1/Service';
import type { IServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import type { KubernetesObject } from './kubernetes-validation.ts';

/** The kinds the chart renders and their types. */
export interface ChartKinds {
  ConfigMap: IConfigMap;
  Deployment: IDeployment;
  Job: IJob;
  NetworkPolicy: INetworkPolicy;
  PodDisruptionBudget: IPodDisruptionBudget;
  PrometheusRule: IPrometheusRule;
  Role: IRole;
  RoleBinding: IRoleBinding;
  Secret: ISecret;
  Service: IService;
  ServiceAccount: IServiceAccount;
  ServiceMonitor: IServiceMonitor;
  StatefulSet: IStatefulSet;
}

/** A kind the chart renders. */
export type ChartKind = keyof ChartKinds;

/** A pod template of a rendered workload (Deployment, StatefulSet, Job). */
export interface RenderedPodTemplate {
  /** `Kind/name` of the workload. */
  readonly owner: string;
  readonly template: IPodTemplateSpec;
}

/** The rendered objects of one `helm template`. */
export class RenderedChart {
  constructor(readonly objects: readonly KubernetesObject[]) {}

  /** Every object of `kind`. */
  all<K extends ChartKind>(kind: K): Array<ChartKinds[K]> {
    return this.objects.filter((object) => object.kind === kind) as unknown as Array<ChartKinds[K]>;
  }

  /** Whether an object of `kind` named `name` was rendered. */
  has(kind: ChartKind, name: string): boolean {
    return this.objects.some((object) => object.kind === kind && object.metadata.name === name);
  }

  /** The object of `kind` named `name`; throws naming the ones that exist. */
  get<K extends ChartKind>(kind: K, name: string): ChartKinds[K] {
    const found = this.objects.find((object) => object.kind === kind && object.metadata.name === name);
    if (found === undefined) {
      const names = this.objects.filter((object) => object.kind === kind).map((object) => object.metadata.name);
      throw new Error(`no ${kind} named ${name}; rendered: ${names.length === 0 ? 'none' : names.join(', ')}`);
    }
    return found as unknown as ChartKinds[K];
  }

  /** The pod templates of every Deployment, StatefulSet and Job. */
  podTemplates(): RenderedPodTemplate[] {
    const workloads: Array<{ kind: string; name: string; template: IPodTemplateSpec | undefined }> = [
      ...this.all('Deployment').map((d) => ({ kind: 'Deployment', name: d.metadata?.name ?? '', template: d.spec?.template })),
      ...this.all('StatefulSet').map((s) => ({ kind: 'StatefulSet', name: s.metadata?.name ?? '', template: s.spec?.template })),
      ...this.all('Job').map((j) => ({ kind: 'Job', name: j.metadata?.name ?? '', template: j.spec?.template })),
    ];
    return workloads.flatMap(({ kind, name, template }) => (template === undefined ? [] : [{ owner: `${kind}/${name}`, template }]));
  }
}
