import { Metadata } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import {
  ApiTokenAuthenticator,
  ApiTokensFileError,
  formatApiTokenLine,
  generateApiToken,
  hashApiToken,
  hasScope,
  parseApiTokens,
  requireScope,
} from './api-tokens.ts';
import { PermissionDeniedError, UnauthenticatedError } from './errors.ts';

function bearer(value: string): Metadata {
  const metadata = new Metadata();
  metadata.set('authorization', value);
  return metadata;
}

describe('API tokens', () => {
  it('are random dft_ tokens stored as sha256 hashes, one line per holder', () => {
    const a = generateApiToken();
    const b = generateApiToken();
    expect(a).toMatch(/^dft_[A-Za-z0-9_-]{43}$/);
    expect(a).not.toBe(b);
    expect(hashApiToken(a)).toMatch(/^sha256:[0-9a-f]{64}$/);
    const line = formatApiTokenLine({ name: 'alice', scope: 'submit', hash: hashApiToken(a) });
    expect(line).not.toContain(a);
    expect(parseApiTokens(`# comment\n\n${line}   # trailing\nops admin ${hashApiToken(b)}\n`, 'tokens')).toEqual([
      { name: 'alice', scope: 'submit', hash: hashApiToken(a) },
      { name: 'ops', scope: 'admin', hash: hashApiToken(b) },
    ]);
    // A list of scopes keeps the strongest.
    expect(parseApiTokens(`ci read,submit ${hashApiToken(a)}`, 'tokens')[0]?.scope).toBe('submit');
  });

  it('refuse a tokens file with a raw token, a bad hash, an unknown scope or duplicates, naming the line and never the token', () => {
    const token = generateApiToken();
    const hash = hashApiToken(token);
    const cases: [string, RegExp][] = [
      [`alice admin ${token}`, /line 1 holds a token itself; store its hash/],
      [`alice admin sha256:abc`, /line 1: the hash must be sha256: and 64/],
      [`alice root ${hash}`, /line 1: unknown scope "root"; scopes are read, submit, admin/],
      [`alice admin ${hash}\nalice read ${hashApiToken(generateApiToken())}`, /line 2: name alice appears twice/],
      [`alice admin ${hash}\nbob read ${hash}`, /line 2: the same token hash appears twice/],
      [`alice admin`, /line 1: expected "name scopes sha256:<hex>"/],
      [`-x admin ${hash}`, /line 1: name must be/],
    ];
    for (const [text, message] of cases) {
      let error: unknown;
      try {
        parseApiTokens(text, 'tokens.txt');
      } catch (err) {
        error = err;
      }
      expect(error, text).toBeInstanceOf(ApiTokensFileError);
      expect((error as Error).message).toMatch(message);
      expect((error as Error).message).not.toContain(token);
    }
  });

  it('authenticate bearer tokens with UNAUTHENTICATED messages that say what to send', () => {
    const token = generateApiToken();
    const auth = new ApiTokenAuthenticator(parseApiTokens(`alice submit ${hashApiToken(token)}`, 't'));
    expect(auth.authenticate(bearer(`Bearer ${token}`))).toEqual({ name: 'alice', scope: 'submit' });
    expect(auth.authenticate(bearer(`bearer ${token}`)).name).toBe('alice');
    const refused = (metadata: Metadata): string => {
      try {
        auth.authenticate(metadata);
      } catch (err) {
        expect(err).toBeInstanceOf(UnauthenticatedError);
        return (err as Error).message;
      }
      return 'accepted';
    };
    expect(refused(new Metadata())).toMatch(/no API token: send "authorization: Bearer <token>"/);
    expect(refused(bearer(token))).toMatch(/not "Bearer <token>"/);
    expect(refused(bearer('Bearer abc'))).toMatch(/not a dinofleet API token/);
    const other = generateApiToken();
    expect(refused(bearer(`Bearer ${other}`))).toMatch(/not one of this coordinator's API tokens/);
    expect(refused(bearer(`Bearer ${other}`))).not.toContain(other);
  });

  it('nest scopes: admin includes submit includes read', () => {
    const reader = { name: 'r', scope: 'read' as const };
    const admin = { name: 'a', scope: 'admin' as const };
    expect(hasScope(reader, 'read')).toBe(true);
    expect(hasScope(reader, 'submit')).toBe(false);
    expect(hasScope(admin, 'read')).toBe(true);
    expect(() => requireScope(reader, 'admin', 'CancelJob')).toThrow(PermissionDeniedError);
    expect(() => requireScope(reader, 'admin', 'CancelJob')).toThrow(/token r has scope read, but CancelJob needs admin/);
    expect(() => requireScope(admin, 'admin', 'CancelJob')).not.toThrow();
  });
});
