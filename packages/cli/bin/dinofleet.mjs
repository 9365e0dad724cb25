#!/usr/bin/env node
// The `dinofleet` command: registers tsx (the sources are TypeScript) and runs src/main.ts.
import { register } from 'tsx/esm/api';

register();
await import('../src/main.ts');
