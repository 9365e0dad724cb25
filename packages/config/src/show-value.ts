/** Received values as error messages quote them. */

const MAX_SHOWN_STRING = 60;

/** A received value as an error message shows it: short, and never the whole of a huge input. */
export function showValue(value: unknown): string {
  if (typeof value === 'string') {
    return value.length <= MAX_SHOWN_STRING
      ? JSON.stringify(value)
      : `${JSON.stringify(value.slice(0, MAX_SHOWN_STRING))}… (${value.length} characters)`;
  }
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value);
  if (value === null) return 'null';
  if (value === undefined) return 'nothing';
  if (Array.isArray(value)) {
    const short = value.length <= 4 && value.every((item) => typeof item === 'number' || typeof item === 'boolean');
    return short ? `[${value.join(', ')}]` : `a list of ${value.length}`;
  }
  if (typeof value === 'object') return 'a mapping';
  return typeof value;
}
