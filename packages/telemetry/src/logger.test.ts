import { describe, expect, it } from 'vitest';
import { createLogger } from './logger.ts';
import type { LoggerOptions } from './logger.ts';
import { isSecretFieldName, maskSecrets } from './redact.ts';

const PEM = ['-----BEGIN RSA PRIVATE KEY-----', 'MIIEowIBAAKCAQEAx4Jf0abc', 'q1w2e3r4t5y6u7i8o9p0', '-----END RSA PRIVATE KEY-----'].join('\n');
const FIXED = new Date('2026-01-02T03:04:05.678Z');

function capture(options: Partial<LoggerOptions> = {}): { lines: string[]; records: () => Record<string, unknown>[]; log: ReturnType<typeof createLogger> } {
  const chunks: string[] = [];
  const log = createLogger({ name: 'worker', stream: { write: (line: string) => chunks.push(line) }, now: () => FIXED, ...options });
  return {
    lines: chunks,
    records: () => chunks.map((c) => JSON.parse(c) as Record<string, unknown>),
    log,
  };
}

describe('createLogger', () => {
  it('writes one JSON object per line with time, level, name, msg and fields', () => {
    const { lines, records, log } = capture();
    log.info('step committed', { step: 12, loss: 6.5 });
    log.warn('multi\nline\nmessage');
    expect(lines).toHaveLength(2);
    for (const line of lines) {
      expect(line.endsWith('\n')).toBe(true);
      expect(line.slice(0, -1)).not.toContain('\n');
    }
    expect(records()).toEqual([
      { time: '2026-01-02T03:04:05.678Z', level: 'info', name: 'worker', msg: 'step committed', step: 12, loss: 6.5 },
      { time: '2026-01-02T03:04:05.678Z', level: 'warn', name: 'worker', msg: 'multi\nline\nmessage' },
    ]);
  });

  it('honours the level', () => {
    const { records, log } = capture({ level: 'warn' });
    log.debug('d');
    log.info('i');
    log.warn('w');
    log.error('e');
    expect(records().map((r) => r['level'])).toEqual(['warn', 'error']);
    expect(log.isLevelEnabled('info')).toBe(false);
    expect(log.isLevelEnabled('error')).toBe(true);

    const debug = capture({ level: 'debug' });
    debug.log.debug('d');
    expect(debug.records().map((r) => r['msg'])).toEqual(['d']);
    const silent = capture({ level: 'silent' });
    silent.log.error('e');
    expect(silent.lines).toEqual([]);
    expect(() => createLogger({ name: 'x', level: 'loud' as never })).toThrow(/level/);
  });

  it('redacts secret-named fields at any depth, in arrays too', () => {
    const { records, log } = capture();
    log.info('connect', {
      s3: { endpoint: 'http://minio:9000', accessKeyId: 'AKIAEXAMPLE', secretAccessKey: 'wJalr', region: 'us-east-1' },
      headers: [{ Authorization: 'Basic dXNlcjpwYXNz' }, { 'x-request-id': 'r1' }],
      deep: { a: { b: { c: { apiToken: 't0k', private_key: 'k', dbPassword: 'p', gcpCredentials: { x: 1 } } } } },
    });
    expect(records()[0]).toMatchObject({
      s3: { endpoint: 'http://minio:9000', accessKeyId: '[redacted]', secretAccessKey: '[redacted]', region: 'us-east-1' },
      headers: [{ Authorization: '[redacted]' }, { 'x-request-id': 'r1' }],
      deep: { a: { b: { c: { apiToken: '[redacted]', private_key: '[redacted]', dbPassword: '[redacted]', gcpCredentials: '[redacted]' } } } },
    });
    const text = JSON.stringify(records());
    for (const secret of ['AKIAEXAMPLE', 'wJalr', 'dXNlcjpwYXNz', 't0k', 'gcpCredentials":{']) expect(text).not.toContain(secret);
  });

  it('redacts secret field names by word, not ViT token counts', () => {
    for (const name of ['token', 'apiToken', 'bearer_token', 'AWS_SECRET_ACCESS_KEY', 'privateKey', 'access-key', 'password', 'credentials']) {
      expect(isSecretFieldName(name), name).toBe(true);
    }
    for (const name of ['numTokens', 'tokensPerImage', 'registerTokens', 'keyCount', 'step']) {
      expect(isSecretFieldName(name), name).toBe(false);
    }
  });

  it('masks a PEM private key, a bearer token and a URL password under innocent names', () => {
    const { lines, records, log } = capture();
    log.error(`handshake failed with Bearer abc.def-ghi`, { blob: `key:\n${PEM}\ntrailer`, note: ['auth was Bearer eyJhbGciOi.x_y=='], redis: 'redis://default:hunter2@redis:6379/0' });
    const [record] = records();
    expect(record).toMatchObject({
      msg: 'handshake failed with Bearer [redacted]',
      blob: 'key:\n[redacted private key]\ntrailer',
      note: ['auth was Bearer [redacted]'],
      redis: 'redis://default:[redacted]@redis:6379/0',
    });
    for (const secret of ['MIIEowIBAAKCAQEAx4Jf0abc', 'q1w2e3r4', 'abc.def-ghi', 'eyJhbGciOi', 'hunter2']) expect(lines.join('')).not.toContain(secret);
    // A key cut off before its END line is still masked to the end.
    expect(maskSecrets(`x ${PEM.slice(0, 60)}`)).toBe('x [redacted private key]');
    expect(maskSecrets('-----BEGIN PUBLIC KEY-----\nAAAA')).toBe('-----BEGIN PUBLIC KEY-----\nAAAA');
  });

  it('binds redacted fields in child loggers; later fields win', () => {
    const { records, log } = capture();
    const child = log.child({ job: 'j1', rank: 0, sessionToken: 'stk' }).child({ rank: 1 });
    child.info('joined', { generation: 4 });
    log.info('parent');
    expect(records()).toEqual([
      { time: FIXED.toISOString(), level: 'info', name: 'worker', msg: 'joined', job: 'j1', rank: 1, sessionToken: '[redacted]', generation: 4 },
      { time: FIXED.toISOString(), level: 'info', name: 'worker', msg: 'parent' },
    ]);
  });

  it('serialises errors with name, message, code, stack and the cause chain', () => {
    const { records, log } = capture();
    const root = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:6379'), { code: 'ECONNREFUSED', password: 'pw' });
    class LeaseError extends Error {
      override readonly name = 'LeaseError';
      readonly code = 'LEASE_LOST';
    }
    const err = new LeaseError('shard lease lost', { cause: root });
    log.error('lease', { err });
    const logged = records()[0]?.['err'] as Record<string, unknown>;
    expect(logged).toMatchObject({ name: 'LeaseError', message: 'shard lease lost', code: 'LEASE_LOST' });
    expect(logged['stack']).toMatch(/^LeaseError: shard lease lost\n\s+at /);
    expect(logged['cause']).toMatchObject({ name: 'Error', message: 'connect ECONNREFUSED 127.0.0.1:6379', code: 'ECONNREFUSED', password: '[redacted]' });
    expect((logged['cause'] as Record<string, unknown>)['stack']).toEqual(expect.any(String));
  });

  it('keeps NaN and Infinity visible, survives cycles and reserved names', () => {
    const { records, log } = capture();
    const cyclic: Record<string, unknown> = { a: 1 };
    cyclic['self'] = cyclic;
    log.warn('non-finite', { loss: NaN, gradNorm: Infinity, big: 2n ** 70n, cyclic, msg: 'shadow', time: 5, skip: undefined });
    expect(records()[0]).toEqual({
      time: FIXED.toISOString(),
      level: 'warn',
      name: 'worker',
      msg: 'non-finite',
      loss: 'NaN',
      gradNorm: 'Infinity',
      big: '1180591620717411303424',
      cyclic: { a: 1, self: '[circular]' },
      _msg: 'shadow',
      _time: 5,
    });
  });
});
