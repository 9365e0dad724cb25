/**
 * A {@link Scaler} for workers that run as a Kubernetes StatefulSet (the Helm chart's
 * `<fullname>-worker`): it reads and sets `spec.replicas` through the StatefulSet's `scale`
 * subresource (`/apis/apps/v1/namespaces/{ns}/statefulsets/{name}/scale`), the only API
 * access the chart's Role grants. Kubernetes starts and stops the pods; the workers
 * register on their own, as with every scaler.
 *
 * `scaleTo(n)` merge-patches `spec.replicas` to n. `release(ids)` lowers the count by the
 * number of named pods of this StatefulSet (a read, then a replace guarded by the scale's
 * resourceVersion, re-read on a conflict); the StatefulSet controller always removes the
 * highest ordinals, which need not be the pods named (see docs/cluster.md, "Kubernetes
 * scaler"). Every call has a deadline and goes through the repository's retry policy
 * (`withRetry` of `@dinofleet/proto`): 429, 5xx and unreachable API servers are retried
 * with jittered backoff; the rest fail at once with a coordinator error class whose
 * message says what to fix.
 */
import { readFileSync } from 'node:fs';
import type { AppsV1Api, KubeConfig, Observable, ObservableMiddleware, RequestContext, V1Scale } from '@kubernetes/client-node';
import {
  AbortedError,
  DeadlineExceededError,
  DinofleetError,
  FailedPreconditionError,
  InternalError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  UnauthenticatedError,
  UnavailableError,
  withRetry,
} from '@dinofleet/proto';
import type { RetryOptions } from '@dinofleet/proto';
import type { Logger } from '@dinofleet/telemetry';
import type { Scaler } from './scaler.ts';

/** Where a pod finds its service account (token, CA, namespace). */
export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

/** Default deadline of one API call, ms. */
export const KUBERNETES_CALL_TIMEOUT_MS = 10_000;

/** Default overall deadline of one scaler operation (every attempt and wait), ms. */
export const KUBERNETES_OPERATION_TIMEOUT_MS = 60_000;

/** Options of {@link KubernetesScaler}. */
export interface KubernetesScalerOptions {
  /** The worker StatefulSet's name (`DINOFLEET_K8S_STATEFULSET`). Required. */
  readonly statefulSet: string;
  /** Its namespace (`DINOFLEET_K8S_NAMESPACE`). Required. */
  readonly namespace: string;
  /**
   * How to reach the API server. @default the pod's in-cluster configuration
   * (`KubeConfig.loadFromCluster()`: `KUBERNETES_SERVICE_HOST`/`_PORT` and the mounted
   * service account token and CA); {@link kubeConfigFromFile} for a kubeconfig file, or a
   * KubeConfig pointing anywhere else (tests).
   */
  readonly kubeConfig?: KubeConfig;
  /** Deadline of one API call, ms. @default {@link KUBERNETES_CALL_TIMEOUT_MS} */
  readonly callTimeoutMs?: number;
  /** Overall deadline of one operation, every retry included, ms. @default {@link KUBERNETES_OPERATION_TIMEOUT_MS} */
  readonly operationTimeoutMs?: number;
  /** Retry settings (attempts, backoff) over the repository's defaults; the deadline comes from `operationTimeoutMs`. */
  readonly retry?: Omit<RetryOptions, 'deadline' | 'signal'>;
  readonly logger?: Logger;
}

/** The StatefulSet's scale as the scaler last saw it. */
export interface StatefulSetScale {
  /** `spec.replicas`: the pods asked for. */
  readonly replicas: number;
  /** `status.replicas`: the pods that exist. */
  readonly currentReplicas: number;
  readonly resourceVersion: string | undefined;
}

/** The chart names its Role after the coordinator: `<fullname>-coordinator` beside `<fullname>-worker`. */
function chartRoleName(statefulSet: string): string | undefined {
  return statefulSet.endsWith('-worker') ? `${statefulSet.slice(0, -'-worker'.length)}-coordinator` : undefined;
}

/** The `message` of a Kubernetes `Status` body, if the body is one. */
function statusMessage(body: unknown): string | undefined {
  let parsed: unknown = body;
  if (typeof body === 'string') {
    try {
      parsed = JSON.parse(body);
    } catch {
      return body.trim() === '' ? undefined : body.trim().slice(0, 300);
    }
  }
  if (typeof parsed === 'object' && parsed !== null && 'message' in parsed && typeof parsed.message === 'string') return parsed.message;
  return undefined;
}

/** An error of `@kubernetes/client-node` with an HTTP status (its `ApiException`). */
function httpStatusOf(err: unknown): number | undefined {
  if (typeof err !== 'object' || err === null || !('code' in err) || typeof err.code !== 'number') return undefined;
  return err.code >= 100 && err.code < 600 ? err.code : undefined;
}

/** The reason a call's AbortSignal fired with, when it was our deadline. */
class CallDeadline extends Error {
  override readonly name = 'CallDeadline';
}

/**
 * Loads a kubeconfig file (`--kubeconfig`), for a coordinator that runs outside the
 * cluster. Its current context names the API server and the credentials.
 */
export async function kubeConfigFromFile(path: string): Promise<KubeConfig> {
  const { KubeConfig: KubeConfigClass } = await import('@kubernetes/client-node');
  const config = new KubeConfigClass();
  try {
    config.loadFromFile(path);
  } catch (err) {
    throw new InvalidArgumentError(`cannot read the kubeconfig ${path}: ${err instanceof Error ? err.message : String(err)}; fix --kubeconfig`, { cause: err });
  }
  if (config.getCurrentCluster() === null) throw new InvalidArgumentError(`the kubeconfig ${path} has no current context with a cluster; set current-context or fix --kubeconfig`);
  return config;
}

/**
 * The pod's in-cluster configuration; a clear error where there is none (a coordinator
 * started with `--scaler kubernetes` outside a pod, or a pod without a service account token).
 */
export async function inClusterKubeConfig(env: NodeJS.ProcessEnv = process.env, serviceAccountDir = SERVICE_ACCOUNT_DIR): Promise<KubeConfig> {
  if ((env['KUBERNETES_SERVICE_HOST'] ?? '') === '' || (env['KUBERNETES_SERVICE_PORT'] ?? '') === '') {
    throw new FailedPreconditionError(
      'the kubernetes scaler found no in-cluster configuration (KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set): ' +
        'run the coordinator in a pod (the Helm chart), pass --kubeconfig for a cluster outside, or use --scaler none|local',
    );
  }
  try {
    readFileSync(`${serviceAccountDir}/token`);
  } catch (err) {
    throw new FailedPreconditionError(
      `the kubernetes scaler has no service account token at ${serviceAccountDir}/token: ` +
        "the coordinator's pod must mount it (automountServiceAccountToken: true, as the Helm chart sets)",
      { cause: err },
    );
  }
  const { KubeConfig: KubeConfigClass } = await import('@kubernetes/client-node');
  const config = new KubeConfigClass();
  // loadFromCluster takes a prefix of the standard path (tests mount it elsewhere).
  config.loadFromCluster(serviceAccountDir.endsWith(SERVICE_ACCOUNT_DIR) ? serviceAccountDir.slice(0, -SERVICE_ACCOUNT_DIR.length) : '');
  return config;
}

/** Scales the worker StatefulSet through its scale subresource. */
export class KubernetesScaler implements Scaler {
  readonly #options: KubernetesScalerOptions;
  readonly #api: AppsV1Api;
  readonly #observable: ObservableClass;
  readonly #where: string;
  readonly #closing = new AbortController();
  #serial: Promise<unknown> = Promise.resolve();
  /** `spec.replicas` as last read or written. */
  #replicas: number | undefined;

  /** Use {@link KubernetesScaler.connect}, which also checks access. */
  private constructor(options: KubernetesScalerOptions, api: AppsV1Api, observable: ObservableClass) {
    this.#options = options;
    this.#api = api;
    this.#observable = observable;
    this.#where = `StatefulSet ${options.namespace}/${options.statefulSet}`;
  }

  /**
   * Builds the scaler and reads the StatefulSet's scale once, so a missing StatefulSet, a
   * missing Role or an unreachable API server stops the coordinator at start with a
   * message saying what to fix (the same errors as later calls).
   */
  static async connect(options: KubernetesScalerOptions): Promise<KubernetesScaler> {
    checkName('statefulSet', options.statefulSet, 253);
    checkName('namespace', options.namespace, 63);
    const { AppsV1Api: AppsV1ApiClass, Observable } = await import('@kubernetes/client-node');
    const kubeConfig = options.kubeConfig ?? (await inClusterKubeConfig());
    const scaler = new KubernetesScaler(options, kubeConfig.makeApiClient(AppsV1ApiClass), Observable);
    const scale = await scaler.readScale();
    options.logger?.info('kubernetes scaler ready', { statefulSet: options.statefulSet, namespace: options.namespace, replicas: scale.replicas, currentReplicas: scale.currentReplicas });
    return scaler;
  }

  /** The last `spec.replicas` read or written; undefined before any. */
  get replicas(): number | undefined {
    return this.#replicas;
  }

  /** GET of the scale subresource. */
  async readScale(): Promise<StatefulSetScale> {
    const scale = await this.#call('read the scale of', (options) =>
      this.#api.readNamespacedStatefulSetScale({ name: this.#options.statefulSet, namespace: this.#options.namespace }, options),
    );
    return this.#remember(scale);
  }

  scaleTo(workers: number): Promise<void> {
    if (!Number.isInteger(workers) || workers < 0) return Promise.reject(new InvalidArgumentError(`workers must be an integer >= 0, got ${workers}`));
    return this.#enqueue(async () => {
      const before = this.#replicas;
      const scale = await this.#call('scale', (options) =>
        this.#api.patchNamespacedStatefulSetScale(
          { name: this.#options.statefulSet, namespace: this.#options.namespace, body: { spec: { replicas: workers } } },
          this.#withHeader(options, 'Content-Type', 'application/merge-patch+json'),
        ),
      );
      this.#remember(scale);
      if (before !== workers) this.#options.logger?.info('scaled the worker StatefulSet', { statefulSet: this.#options.statefulSet, from: before, to: workers });
    });
  }

  release(workerIds: readonly string[]): Promise<void> {
    const ordinal = new RegExp(`^${escapeRegExp(this.#options.statefulSet)}-(\\d+)$`);
    const ours = new Set(workerIds.filter((id) => ordinal.test(id)));
    if (ours.size === 0) return this.#enqueue(() => Promise.resolve());
    return this.#enqueue(async () => {
      // Read, lower, replace with the read resourceVersion: a concurrent change (kubectl,
      // an HPA, another coordinator) makes the replace fail with 409 and we read again.
      for (let attempt = 1; ; attempt++) {
        const current = await this.readScale();
        const replicas = Math.max(0, current.replicas - ours.size);
        try {
          const scale = await this.#call('scale', (options) =>
            this.#api.replaceNamespacedStatefulSetScale(
              {
                name: this.#options.statefulSet,
                namespace: this.#options.namespace,
                body: {
                  apiVersion: 'autoscaling/v1',
                  kind: 'Scale',
                  metadata: { name: this.#options.statefulSet, namespace: this.#options.namespace, ...(current.resourceVersion !== undefined && { resourceVersion: current.resourceVersion }) },
                  spec: { replicas },
                },
              },
              options,
            ),
          );
          this.#remember(scale);
          this.#options.logger?.info('lowered the worker StatefulSet for released workers', {
            statefulSet: this.#options.statefulSet,
            from: current.replicas,
            to: replicas,
            released: [...ours],
          });
          return;
        } catch (err) {
          if (!(err instanceof AbortedError) || attempt >= 5) throw err;
        }
      }
    });
  }

  /** Stops pending retries. The pods stay: they are the cluster's, and a new coordinator finds them. */
  async close(): Promise<void> {
    this.#closing.abort();
    await this.#serial;
  }

  #remember(scale: V1Scale): StatefulSetScale {
    const replicas = scale.spec?.replicas ?? 0;
    this.#replicas = replicas;
    return { replicas, currentReplicas: scale.status?.replicas ?? 0, resourceVersion: scale.metadata?.resourceVersion };
  }

  #enqueue(run: () => Promise<void>): Promise<void> {
    const next = this.#serial.then(run);
    this.#serial = next.catch(() => undefined);
    return next;
  }

  /** One API operation: a deadline per attempt, the shared retry policy, errors mapped. */
  async #call<T>(what: string, send: (options: CallOptions) => Promise<T>): Promise<T> {
    const callTimeoutMs = this.#options.callTimeoutMs ?? KUBERNETES_CALL_TIMEOUT_MS;
    const deadline = Date.now() + (this.#options.operationTimeoutMs ?? KUBERNETES_OPERATION_TIMEOUT_MS);
    if (this.#closing.signal.aborted) throw new UnavailableError(`the kubernetes scaler is closed; not trying to ${what} ${this.#where}`);
    return withRetry(
      async ({ deadlineMs }) => {
        const timeoutMs = Math.max(1, Math.min(callTimeoutMs, deadlineMs - Date.now()));
        const controller = new AbortController();
        const timer = setTimeout(() => controller.abort(new CallDeadline(`no answer within ${timeoutMs} ms`)), timeoutMs);
        const onClose = (): void => controller.abort(new CallDeadline('the scaler closed'));
        this.#closing.signal.addEventListener('abort', onClose, { once: true });
        try {
          return await send({
            middleware: [preMiddleware(this.#observable, (context) => context.setSignal(controller.signal))],
            middlewareMergeStrategy: 'append',
          });
        } catch (err) {
          throw this.#mapError(what, err, controller.signal.aborted ? timeoutMs : undefined);
        } finally {
          clearTimeout(timer);
          this.#closing.signal.removeEventListener('abort', onClose);
        }
      },
      { ...this.#options.retry, deadline, signal: this.#closing.signal },
    );
  }

  #withHeader(options: CallOptions, key: string, value: string): CallOptions {
    return { ...options, middleware: [...(options.middleware ?? []), preMiddleware(this.#observable, (context) => context.setHeaderParam(key, value))] };
  }

  /** An error of the client (HTTP status, network, our deadline) as a coordinator error class. */
  #mapError(what: string, err: unknown, timedOutAfterMs: number | undefined): DinofleetError {
    if (err instanceof DinofleetError) return err;
    const where = this.#where;
    if (timedOutAfterMs !== undefined) {
      return new DeadlineExceededError(`the Kubernetes API server did not answer within ${timedOutAfterMs} ms when asked to ${what} ${where}; check the API server's health`, { cause: err });
    }
    const httpStatus = httpStatusOf(err);
    if (httpStatus === undefined) {
      const detail = err instanceof Error ? err.message : String(err);
      return new UnavailableError(`cannot reach the Kubernetes API server to ${what} ${where}: ${detail}`, { cause: err });
    }
    const body = typeof err === 'object' && err !== null && 'body' in err ? statusMessage(err.body) : undefined;
    const said = body === undefined ? `HTTP ${httpStatus}` : `HTTP ${httpStatus}: ${body}`;
    switch (httpStatus) {
      case 401:
        return new UnauthenticatedError(
          `the Kubernetes API server refused the coordinator's credentials (${said}) when asked to ${what} ${where}: ` +
            'the service account token is missing or expired; mount it (automountServiceAccountToken: true) or fix --kubeconfig',
          { cause: err },
        );
      case 403: {
        const role = chartRoleName(this.#options.statefulSet);
        return new PermissionDeniedError(
          `the coordinator may not ${what} ${where} (${said}): its service account needs get, patch and update on ` +
            `statefulsets/scale of ${this.#options.statefulSet} in ${this.#options.namespace}; ` +
            (role === undefined
              ? 'the Helm chart grants them with its Role <fullname>-coordinator (rbac.create: true)'
              : `the Helm chart grants them with the Role ${role} and its RoleBinding (rbac.create: true): check they exist and bind the coordinator's service account`),
          { cause: err },
        );
      }
      case 404:
        return new NotFoundError(
          `${where} does not exist (${said}): set DINOFLEET_K8S_STATEFULSET/--k8s-statefulset and DINOFLEET_K8S_NAMESPACE/--k8s-namespace to the worker StatefulSet (the Helm chart sets both)`,
          { cause: err },
        );
      case 409:
        return new AbortedError(`${where} changed while the coordinator scaled it (${said})`, { cause: err });
      case 400:
      case 422:
        return new InvalidArgumentError(`the Kubernetes API server rejected the request to ${what} ${where} (${said})`, { cause: err });
      case 408:
      case 429:
      case 500:
      case 502:
      case 503:
      case 504:
        return new UnavailableError(`the Kubernetes API server could not ${what} ${where} now (${said})`, { cause: err });
      default:
        return new InternalError(`unexpected answer from the Kubernetes API server to ${what} ${where} (${said})`, { cause: err });
    }
  }
}

/** Per-call options of the client: middleware that runs before each request. */
type CallOptions = NonNullable<Parameters<AppsV1Api['readNamespacedStatefulSetScale']>[1]>;

/** The client's Observable (its rxjs stub), needed to build middleware. */
type ObservableClass = typeof Observable;

/** Middleware that changes each request before it is sent. */
function preMiddleware(observable: ObservableClass, change: (context: RequestContext) => void): ObservableMiddleware {
  return {
    pre: (context) => {
      change(context);
      return new observable(Promise.resolve(context));
    },
    post: (response) => new observable(Promise.resolve(response)),
  };
}

function checkName(field: string, value: string, maxLength: number): void {
  if (value.length === 0 || value.length > maxLength || !/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(value)) {
    throw new InvalidArgumentError(`kubernetes scaler: ${field} must be a Kubernetes object name (lowercase letters, digits, '-', '.', at most ${maxLength}), got ${JSON.stringify(value)}`);
  }
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
