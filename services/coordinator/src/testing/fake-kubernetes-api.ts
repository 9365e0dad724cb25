/**
 * A small HTTP server that speaks the Kubernetes API for the calls the Kubernetes scaler
 * makes: GET, PATCH (merge patch or JSON patch) and PUT of
 * `/apis/apps/v1/namespaces/{ns}/statefulsets/{name}/scale`, with bearer-token checks,
 * `resourceVersion` conflicts (409) and `Status` error bodies, as the API server sends them.
 * Tests queue failures and delays to see the scaler's retries, deadlines and messages.
 */
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { KubeConfig } from '@kubernetes/client-node';

/** One request the server got. */
export interface FakeKubernetesRequest {
  readonly method: string;
  readonly path: string;
  readonly contentType: string | undefined;
  readonly authorization: string | undefined;
  readonly body: unknown;
}

/** Options of {@link startFakeKubernetesApi}. */
export interface FakeKubernetesApiOptions {
  readonly namespace: string;
  readonly statefulSet: string;
  /** `spec.replicas` at start. @default 0 */
  readonly replicas?: number;
  /** The bearer token the server accepts. @default 'test-token' */
  readonly token?: string;
  /** Verbs the service account may use on the scale subresource. @default get, patch, update */
  readonly allowedVerbs?: readonly ('get' | 'patch' | 'update')[];
}

/** A scripted answer for the next request: an error status, a delay, or a change made first. */
export type FakeKubernetesFault =
  | { readonly status: number; readonly reason?: string }
  | { readonly delayMs: number }
  /** Runs `before`, then answers as usual (e.g. another writer's change just before ours). */
  | { readonly before: () => void };

/** A running fake API server. */
export interface FakeKubernetesApi extends AsyncDisposable {
  /** `http://127.0.0.1:<port>`. */
  readonly url: string;
  /** Every request, in order. */
  readonly requests: FakeKubernetesRequest[];
  /** The StatefulSet's `spec.replicas` now. */
  replicas: number;
  /** The scale's `metadata.resourceVersion` now (bumped by every write). */
  readonly resourceVersion: number;
  /** Answers the next requests with these, one each, before behaving normally again. */
  fail(...faults: FakeKubernetesFault[]): void;
  /** Changes the scale as another writer would (bumps the resourceVersion). */
  setReplicasElsewhere(replicas: number): void;
  /** A KubeConfig for this server with the given token. */
  kubeConfig(token?: string): Promise<KubeConfig>;
  close(): Promise<void>;
}

const VERB_BY_METHOD: Readonly<Record<string, 'get' | 'patch' | 'update'>> = { GET: 'get', PATCH: 'patch', PUT: 'update' };

const REASON_BY_STATUS: Readonly<Record<number, string>> = {
  400: 'BadRequest',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'NotFound',
  409: 'Conflict',
  422: 'Invalid',
  429: 'TooManyRequests',
  500: 'InternalError',
  503: 'ServiceUnavailable',
};

/** Starts the server on a free loopback port. */
export async function startFakeKubernetesApi(options: FakeKubernetesApiOptions): Promise<FakeKubernetesApi> {
  const token = options.token ?? 'test-token';
  const allowed = new Set(options.allowedVerbs ?? ['get', 'patch', 'update']);
  const path = `/apis/apps/v1/namespaces/${options.namespace}/statefulsets/${options.statefulSet}/scale`;
  const requests: FakeKubernetesRequest[] = [];
  const faults: FakeKubernetesFault[] = [];
  let replicas = options.replicas ?? 0;
  let resourceVersion = 1;

  const scale = (): Record<string, unknown> => ({
    kind: 'Scale',
    apiVersion: 'autoscaling/v1',
    metadata: { name: options.statefulSet, namespace: options.namespace, resourceVersion: String(resourceVersion) },
    spec: { replicas },
    // The controller is instant here: the pods asked for are the pods there.
    status: { replicas, selector: `app.kubernetes.io/component=worker` },
  });
  const send = (response: ServerResponse, status: number, body: unknown): void => {
    response.writeHead(status, { 'content-type': 'application/json' });
    response.end(JSON.stringify(body));
  };
  const failure = (response: ServerResponse, status: number, message: string, reason = REASON_BY_STATUS[status] ?? 'Unknown'): void =>
    send(response, status, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code: status });

  const handle = async (request: IncomingMessage, response: ServerResponse): Promise<void> => {
    const chunks: Buffer[] = [];
    for await (const chunk of request) chunks.push(chunk as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    let body: unknown;
    try {
      body = text === '' ? undefined : JSON.parse(text);
    } catch {
      body = text;
    }
    const method = request.method ?? 'GET';
    const url = new URL(request.url ?? '/', 'http://localhost');
    requests.push({ method, path: url.pathname, contentType: request.headers['content-type'], authorization: request.headers.authorization, body });

    const fault = faults.shift();
    if (fault !== undefined && 'delayMs' in fault) await new Promise((resolve) => setTimeout(resolve, fault.delayMs));
    else if (fault !== undefined && 'before' in fault) fault.before();
    else if (fault !== undefined) return failure(response, fault.status, `scripted failure ${fault.status}`, fault.reason);

    if (request.headers.authorization !== `Bearer ${token}`) return failure(response, 401, 'Unauthorized');
    const verb = VERB_BY_METHOD[method];
    const resourceMatch = /^\/apis\/apps\/v1\/namespaces\/([^/]+)\/statefulsets\/([^/]+)\/scale$/.exec(url.pathname);
    if (verb === undefined || resourceMatch === null) return failure(response, 404, 'the server could not find the requested resource');
    const [, namespace, name] = resourceMatch;
    const user = 'system:serviceaccount:train:df-dinofleet-coordinator';
    if (!allowed.has(verb)) {
      return failure(response, 403, `statefulsets.apps "${name}" is forbidden: User "${user}" cannot ${verb} resource "statefulsets/scale" in API group "apps" in the namespace "${namespace}"`);
    }
    if (url.pathname !== path) return failure(response, 404, `statefulsets.apps "${name}" not found`);

    if (verb === 'get') return send(response, 200, scale());
    let next: unknown;
    if (verb === 'patch') {
      const type = request.headers['content-type'] ?? '';
      if (type.startsWith('application/merge-patch+json') || type.startsWith('application/strategic-merge-patch+json')) {
        next = (body as { spec?: { replicas?: unknown } } | undefined)?.spec?.replicas;
      } else if (type.startsWith('application/json-patch+json') && Array.isArray(body)) {
        next = (body as { op?: string; path?: string; value?: unknown }[]).find((op) => op.path === '/spec/replicas' && (op.op === 'replace' || op.op === 'add'))?.value;
      } else {
        return send(response, 415, { kind: 'Status', status: 'Failure', message: `the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml`, reason: 'UnsupportedMediaType', code: 415 });
      }
    } else {
      const put = body as { metadata?: { resourceVersion?: string }; spec?: { replicas?: unknown } } | undefined;
      const version = put?.metadata?.resourceVersion;
      if (version !== undefined && version !== String(resourceVersion)) {
        return failure(response, 409, `Operation cannot be fulfilled on statefulsets.apps "${name}": the object has been modified; please apply your changes to the latest version and try again`);
      }
      next = put?.spec?.replicas;
    }
    if (typeof next !== 'number' || !Number.isInteger(next) || next < 0) {
      return failure(response, 422, `Scale.autoscaling "${name}" is invalid: spec.replicas: Invalid value: ${JSON.stringify(next)}: must be greater than or equal to 0`);
    }
    replicas = next;
    resourceVersion++;
    return send(response, 200, scale());
  };

  const server: Server = createServer((request, response) => {
    handle(request, response).catch((err: unknown) => failure(response, 500, String(err)));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
    return closing;
  };
  return {
    url,
    requests,
    get replicas() {
      return replicas;
    },
    set replicas(value: number) {
      replicas = value;
    },
    get resourceVersion() {
      return resourceVersion;
    },
    fail: (...scripted) => faults.push(...scripted),
    setReplicasElsewhere: (value) => {
      replicas = value;
      resourceVersion++;
    },
    kubeConfig: async (asToken = token) => {
      const { KubeConfig: KubeConfigClass } = await import('@kubernetes/client-node');
      const config = new KubeConfigClass();
      // Plain HTTP needs skipTLSVerify in @kubernetes/client-node; the API server is ours.
      config.loadFromClusterAndUser({ name: 'fake', server: url, skipTLSVerify: true }, { name: 'coordinator', token: asToken });
      return config;
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}
