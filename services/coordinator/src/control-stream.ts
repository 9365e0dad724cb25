/**
 * The WorkerControl service: the Control stream each worker holds (Register first, then
 * Heartbeat / CommitStep / Leaving) and AcquireLease. Fleet members only: the port also
 * serves the token-guarded job API, so the TLS handshake lets clients without a certificate
 * in, and every call here checks that the caller presented one of the fleet CA.
 */
import type { ServerDuplexStream } from '@grpc/grpc-js';
import {
  FailedPreconditionError,
  NotFoundError,
  requireFleetPeer,
  toServiceError,
  unaryHandler,
} from '@dinofleet/proto';
import type {
  AcquireLeaseRequest,
  AcquireLeaseResponse,
  ControlRequest,
  ControlResponse,
  TransportSecurity,
  WorkerControlServer,
} from '@dinofleet/proto';
import type { Logger } from '@dinofleet/telemetry';
import { NO_STATE } from './worker-registry.ts';
import type { WorkerRegistry, WorkerSession } from './worker-registry.ts';

/** Who answers AcquireLease for a job (its runner in this process). */
export interface LeaseAuthority {
  acquireLease(request: AcquireLeaseRequest): Promise<AcquireLeaseResponse>;
}

/** Options of {@link workerControlService}. */
export interface WorkerControlOptions {
  readonly registry: WorkerRegistry;
  /** The coordinator's transport security: with mTLS only callers with a fleet certificate are served. */
  readonly security: TransportSecurity;
  readonly logger: Logger;
  /** The runner of a job, or undefined when the job does not run here. */
  readonly runnerOf: (jobId: string) => LeaseAuthority | undefined;
  /**
   * Whether a job a registering worker holds state for may still continue with it (it
   * exists and is not terminal). Workers holding such state are kept for that job's
   * resume; the others are fresh idle workers.
   */
  readonly heldJobIsLive: (jobId: string) => Promise<boolean>;
}

/** The grpc-js implementation of WorkerControl. */
export function workerControlService(options: WorkerControlOptions): WorkerControlServer {
  const { registry, logger, security } = options;
  /** Whether the caller is a fleet member; logs the refusal (peer address only) when not. */
  const admit = (call: Parameters<typeof requireFleetPeer>[0] & { getPeer(): string; getPath(): string }): void => {
    try {
      requireFleetPeer(call, security, 'WorkerControl');
    } catch (err) {
      logger.warn('WorkerControl call without a fleet certificate refused', { peer: call.getPeer(), path: call.getPath() });
      throw err;
    }
  };
  return {
    control: (call: ServerDuplexStream<ControlRequest, ControlResponse>) => {
      try {
        admit(call);
      } catch (err) {
        // Ends the stream with UNAUTHENTICATED before a Register is read: the caller never
        // becomes a session, so it can neither be assigned work nor see an Assignment.
        call.emit('error', toServiceError(err));
        return;
      }
      let session: WorkerSession | undefined;
      let ended = false;
      const endStream = (): void => {
        if (ended) return;
        ended = true;
        try {
          call.end();
        } catch {
          // already torn down
        }
      };
      const gone = (reason: string): void => {
        if (session !== undefined) registry.remove(session, reason);
        endStream();
      };
      call.on('data', (request: ControlRequest) => {
        const message = request.message;
        if (message === undefined) return;
        if (session === undefined) {
          if (message.$case !== 'register') {
            logger.warn('control stream did not start with Register; closing it', { first: message.$case });
            endStream();
            return;
          }
          const register = message.register;
          if (register.workerId === '') {
            logger.warn('Register without worker_id; closing the stream');
            endStream();
            return;
          }
          session = {
            workerId: register.workerId,
            collectiveAddress: register.collectiveAddress,
            backend: register.backend,
            capabilities: register.capabilities,
            held: {
              jobId: register.jobId,
              stateStep: register.stateStep,
              stateHash: Buffer.from(register.stateHash).toString('hex'),
              pendingStep: register.pendingStep,
              pendingHash: Buffer.from(register.pendingHash).toString('hex'),
            },
            claimedBy: undefined,
            lastSeenMs: Date.now(),
            leaving: undefined,
            send: (response) => {
              if (ended || call.destroyed || call.writableEnded) return;
              call.write(response);
            },
            end: endStream,
          };
          logger.info('worker registered', {
            workerId: register.workerId,
            collectiveAddress: register.collectiveAddress,
            heldJob: register.jobId,
            heldStep: register.stateStep,
            pendingStep: register.pendingStep,
          });
          registry.register(session);
          if (register.jobId !== '') {
            const registered = session;
            options.heldJobIsLive(register.jobId).then(
              (live) => {
                if (live || registered.held.jobId !== register.jobId) return;
                registered.held = NO_STATE;
                registry.wake();
              },
              (err: unknown) => logger.warn('checking the job a worker holds failed', { err, jobId: register.jobId }),
            );
          }
          return;
        }
        registry.touch(session);
        switch (message.$case) {
          case 'register':
            logger.warn('second Register on one control stream ignored', { workerId: session.workerId });
            return;
          case 'heartbeat':
            return;
          case 'commitStep':
            registry.commit(session, message.commitStep);
            return;
          case 'leaving': {
            const reason = message.leaving.reason === '' ? 'no reason given' : message.leaving.reason;
            logger.info('worker leaving', { workerId: session.workerId, reason, graceful: message.leaving.graceful });
            if (!message.leaving.graceful) {
              gone(`worker left (${reason})`);
              return;
            }
            // Graceful: its job lets it finish the step and stops it at the next boundary;
            // an idle worker is stopped at once (it exits on Stop).
            if (!registry.leaving(session, reason)) session.send({ message: { $case: 'stop', stop: { reason: `left: ${reason}` } } });
            return;
          }
          case 'stepFailed':
            logger.info('worker step failed', { workerId: session.workerId, ...message.stepFailed });
            registry.stepFailed(session, message.stepFailed);
            return;
          default: {
            const unknown: never = message;
            return unknown;
          }
        }
      });
      call.on('end', () => gone('control stream ended'));
      call.on('cancelled', () => gone('control stream cancelled'));
      call.on('error', (err: Error) => gone(`control stream failed: ${err.message}`));
      call.on('close', () => gone('control stream closed'));
    },
    acquireLease: unaryHandler(async (request: AcquireLeaseRequest, call) => {
      admit(call);
      const runner = options.runnerOf(request.jobId);
      if (runner === undefined) {
        throw new NotFoundError(`job ${request.jobId} is not running on this coordinator; wait for the next Assignment`);
      }
      return runner.acquireLease(request);
    }, { onInternalError: (err, path) => logger.error('internal error', { path, err }) }),
  };
}

/** Thrown for a lease request from a rank that is not (or no longer) in the generation. */
export function staleRankError(message: string): FailedPreconditionError {
  return new FailedPreconditionError(message);
}
