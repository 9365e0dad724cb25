/**
 * @dinofleet/helm-chart: the Helm chart in `helm/dinofleet` as code: its values schema (from
 * which `values.schema.json` is generated), the generated-file check, and helpers that render
 * the chart with the pinned Helm and validate what it renders against the Kubernetes schemas.
 */
export {
  CHART_API_SCOPES,
  CHART_API_TOKENS_DIR,
  CHART_LOG_LEVELS,
  CHART_SCALERS,
  CHART_TLS_DIR,
  CHART_VALUES_SCHEMA,
  REDIS_MODES,
  WORKER_ADVERTISE_MODES,
  type ChartScaler,
  type ChartValuesInput,
  type RedisMode,
  type WorkerAdvertiseMode,
} from './chart-values-schema.ts';
export {
  CHART_DASHBOARDS_DIR,
  CHART_DIR,
  CHART_RULES_FILE,
  REPO_ROOT,
  chartValuesJsonSchema,
  generatedChartFiles,
  staleChartFiles,
  writeChartFiles,
  type GeneratedChartFile,
  type GeneratedChartFiles,
} from './chart-files.ts';
export {
  DEFAULT_KUBE_VERSION,
  HelmCommandError,
  HelmUnavailableError,
  helmBinaryPath,
  helmLint,
  helmTemplate,
  parseManifests,
  renderChart,
  type HelmChartOptions,
  type HelmResult,
} from './helm-cli.ts';
export { KubernetesValidationError, VALIDATED_KINDS, validateKubernetesObject, type KubernetesObject } from './kubernetes-validation.ts';
export { RenderedChart, type ChartKind, type ChartKinds, type RenderedPodTemplate } from './rendered-chart.ts';
