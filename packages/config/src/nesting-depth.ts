/**
 * How deeply a spec text nests flow collections (`[` / `{`), measured before any parser
 * sees it. Parsers recurse per level; 64 KiB of `[` is 65 536 levels, which overflows the
 * stack, and V8 turns a stack overflow inside regular-expression compilation into a fatal
 * out-of-memory abort of the whole process. A real job spec nests a handful of levels.
 */

/**
 * The deepest `[`/`{` nesting in `text`, skipping quoted strings and `#` comments. It is an
 * over-estimate for YAML plain scalars that contain brackets (`a[b`), which is harmless at
 * the scale of `JOB_SPEC_LIMITS.maxNestingDepth`.
 */
export function flowNestingDepth(text: string): number {
  let depth = 0;
  let deepest = 0;
  for (let i = 0; i < text.length; i++) {
    const char = text[i];
    if (char === '"' || char === "'") {
      // Skip to the closing quote; in double quotes a backslash escapes the next character,
      // in single quotes '' is an escaped quote (which this loop reads as close + open).
      for (i++; i < text.length && text[i] !== char; i++) if (char === '"' && text[i] === '\\') i++;
    } else if (char === '#' && (i === 0 || /\s/.test(text[i - 1] ?? ''))) {
      while (i < text.length && text[i] !== '\n') i++;
    } else if (char === '[' || char === '{') {
      depth++;
      if (depth > deepest) deepest = depth;
    } else if ((char === ']' || char === '}') && depth > 0) {
      depth--;
    }
  }
  return deepest;
}
