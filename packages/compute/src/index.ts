export {
  COMPUTE_BACKENDS,
  ComputeBackendError,
  initComputeBackend,
  parseComputeBackend,
  type ComputeBackend,
  type ComputeBackendInfo,
} from './compute-backend.ts';
