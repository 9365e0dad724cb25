/**
 * Where a JSON text first goes wrong. `JSON.parse` does not always say (V8 reports
 * "Unexpected token '}', ... is not valid JSON" without a position), so a failed parse is
 * re-scanned by this small validator, which only finds the offset.
 */

const WHITESPACE = new Set([' ', '\t', '\n', '\r']);
const NUMBER = /-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/y;
// eslint-disable-next-line no-control-regex -- JSON strings may not hold raw control characters
const STRING_BODY = /(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;

/** Unwinds the scanner to the offending offset. */
class JsonSyntaxOffset extends Error {
  constructor(readonly offset: number) {
    super(`JSON syntax error at offset ${offset}`);
  }
}

class Scanner {
  position = 0;
  constructor(private readonly text: string) {}

  private skipWhitespace(): void {
    while (WHITESPACE.has(this.text[this.position] ?? '')) this.position++;
  }

  private fail(): never {
    throw new JsonSyntaxOffset(this.position);
  }

  private expect(char: string): void {
    this.skipWhitespace();
    if (this.text[this.position] !== char) this.fail();
    this.position++;
  }

  private match(pattern: RegExp): void {
    pattern.lastIndex = this.position;
    if (!pattern.test(this.text)) this.fail();
    this.position = pattern.lastIndex;
  }

  // Recursive: parseJobSpec refuses deep nesting before a text gets here.
  value(): void {
    this.skipWhitespace();
    const char = this.text[this.position];
    if (char === '{') {
      this.position++;
      this.skipWhitespace();
      if (this.text[this.position] === '}') {
        this.position++;
        return;
      }
      for (;;) {
        this.expect('"');
        this.match(STRING_BODY);
        this.expect(':');
        this.value();
        this.skipWhitespace();
        if (this.text[this.position] === ',') this.position++;
        else return this.expect('}');
      }
    }
    if (char === '[') {
      this.position++;
      this.skipWhitespace();
      if (this.text[this.position] === ']') {
        this.position++;
        return;
      }
      for (;;) {
        this.value();
        this.skipWhitespace();
        if (this.text[this.position] === ',') this.position++;
        else return this.expect(']');
      }
    }
    if (char === '"') {
      this.position++;
      return this.match(STRING_BODY);
    }
    for (const literal of ['true', 'false', 'null']) {
      if (this.text.startsWith(literal, this.position)) {
        this.position += literal.length;
        return;
      }
    }
    this.match(NUMBER);
  }

  document(): void {
    this.value();
    this.skipWhitespace();
    if (this.position < this.text.length) this.fail();
  }
}


/** The offset of the first syntax error in `text`, or `undefined` if it is valid JSON. */
export function jsonSyntaxErrorOffset(text: string): number | undefined {
  try {
    new Scanner(text).document();
    return undefined;
  } catch (error) {
    if (error instanceof JsonSyntaxOffset) return error.offset;
    throw error;
  }
}
