/**
 * `dinofleet certs`: a development CA and one fleet certificate as a TLS directory
 * (`createDevCertificates` of @dinofleet/proto), with the errors a user can act on.
 */
import { basename } from 'node:path';

import { InvalidArgumentError } from '@dinofleet/proto';
import { CA_KEY_FILE, createDevCertificates } from '@dinofleet/proto/dev-certificates';

import { CliError, ExitCode } from './cli-error.ts';

/** Options of {@link writeDevCertificates}. */
export interface WriteDevCertificatesOptions {
  /** Directory to write (created if needed). */
  readonly out: string;
  /** Extra DNS names or IPs of the fleet certificate. @default none */
  readonly hosts?: readonly string[];
  /** Days the certificates are valid, 1-3650. @default 365 */
  readonly days?: number;
  /** Replace existing files. @default false */
  readonly force?: boolean;
}

/**
 * Writes the certificates and returns the paths written. Existing files without `force`,
 * a bad host or day count are {@link CliError}s with exit 2; a directory that cannot be
 * written is one with exit 1.
 */
export async function writeDevCertificates(options: WriteDevCertificatesOptions): Promise<string[]> {
  try {
    return await createDevCertificates(options.out, {
      ...(options.hosts !== undefined && { hosts: options.hosts }),
      ...(options.days !== undefined && { days: options.days }),
      ...(options.force !== undefined && { force: options.force }),
    });
  } catch (error) {
    if (error instanceof InvalidArgumentError) throw new CliError(error.message, ExitCode.Usage, { cause: error });
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== undefined) throw new CliError(`cannot write certificates to ${options.out}: ${code} (${(error as Error).message})`, ExitCode.Failure, { cause: error });
    throw error;
  }
}

/** What `dinofleet certs` tells the user after writing, besides the paths. */
export function certificatesNote(paths: readonly string[], days: number): string {
  const caKey = paths.find((path) => basename(path) === CA_KEY_FILE) ?? CA_KEY_FILE;
  return [
    `note: development certificates, valid ${days} days: a new CA (ca.crt) and one fleet certificate (tls.crt, tls.key) for server and client authentication.`,
    '  Give ca.crt, tls.crt and tls.key to every process of the fleet (--tls-dir DIR); a job API client needs only ca.crt.',
    `  Keep ${caKey} off the fleet's machines: it signs new fleet members. Do not copy it into a Secret or an image.`,
    '  For production use cert-manager or your own PKI, with the same file names (ca.crt, tls.crt, tls.key).',
    '',
  ].join('\n');
}
