import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FEATURES } from './declarations';
import { sqsConformanceTarget } from './sqs-target';
import { CHECKED_ROWS, DESCRIPTIVE_ROWS, TABLE_COLUMNS } from './features';

/**
 * README.md's "Guarantees per broker" table (after `<!-- guarantees-table -->`) against the
 * conformance targets' declared features: each checked row's cell begins with the value its
 * target declares, every row is either checked or listed as descriptive, and each column's target
 * runs the suite with that column's declarations.
 */
const ROOT = join(__dirname, '..', '..');
const MARKER = '<!-- guarantees-table -->';

/**
 * Which conformance file runs each column, and how it names its declarations (a target defined in
 * its spec file; importing that file would run its suite, so its text is read).
 */
const TARGET_FILES: Record<'memory' | 'rabbitmq' | 'kafka' | 'redis' | 'nats', { file: string; reference: string }> = {
  memory: { file: 'memory.conformance.spec.ts', reference: 'FEATURES.memory' },
  rabbitmq: { file: 'rabbitmq.conformance.spec.ts', reference: 'FEATURES.rabbitmq' },
  kafka: { file: 'kafka.conformance.spec.ts', reference: 'FEATURES.kafka' },
  redis: { file: 'redis.conformance.spec.ts', reference: 'FEATURES.redis' },
  nats: { file: 'nats.conformance.spec.ts', reference: 'FEATURES.nats' },
};

function cells(line: string): string[] {
  // Cells are split on pipes outside backticks (none of the table's code spans holds one).
  return line
    .trim()
    .replace(/^\||\|$/g, '')
    .split('|')
    .map((cell) => cell.trim());
}

function readTable(): { header: string[]; rows: Map<string, string[]> } {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const at = readme.indexOf(MARKER);
  if (at < 0) throw new Error(`README.md has no ${MARKER} before its guarantees table`);
  const lines = readme.slice(at + MARKER.length).trimStart().split('\n');
  const tableLines: string[] = [];
  for (const line of lines) {
    if (!line.trim().startsWith('|')) break;
    tableLines.push(line);
  }
  const [header, separator, ...body] = tableLines.map(cells);
  expect(separator.every((cell) => /^-+$/.test(cell))).toBe(true);
  const rows = new Map<string, string[]>();
  for (const row of body) {
    expect(rows.has(row[0])).toBe(false);
    rows.set(row[0], row.slice(1));
  }
  return { header, rows };
}

describe("README.md's guarantees table", () => {
  const { header, rows } = readTable();

  it('has one column per conformance target, in order', () => {
    expect(header).toEqual(['guarantee', ...TABLE_COLUMNS]);
    for (const row of rows.values()) expect(row).toHaveLength(TABLE_COLUMNS.length);
  });

  it('has every declared feature as a row, and no row that is neither checked nor listed as descriptive', () => {
    expect([...rows.keys()].filter((label) => !(label in CHECKED_ROWS) && !DESCRIPTIVE_ROWS.includes(label))).toEqual([]);
    expect(Object.keys(CHECKED_ROWS).filter((label) => !rows.has(label))).toEqual([]);
    expect(DESCRIPTIVE_ROWS.filter((label) => !rows.has(label))).toEqual([]);
  });

  it('begins each checked cell with the value its target declares', () => {
    const mismatches: string[] = [];
    for (const [label, render] of Object.entries(CHECKED_ROWS)) {
      const row = rows.get(label) ?? [];
      TABLE_COLUMNS.forEach((column, i) => {
        const expected = render(FEATURES[column]);
        const cell = row[i] ?? '';
        // The value, then the end of the cell or an explanation after a space, colon, comma or parenthesis.
        if (!(cell === expected || (cell.startsWith(expected) && /^[\s:,(]/.test(cell.slice(expected.length))))) {
          mismatches.push(`${label} / ${column}: declared '${expected}', README says '${cell}'`);
        }
      });
    }
    expect(mismatches).toEqual([]);
  });

  it("is checked against the declarations each column's conformance target runs with", () => {
    for (const { file, reference } of Object.values(TARGET_FILES)) {
      const source = readFileSync(join(__dirname, file), 'utf8');
      expect({ file, declares: source.includes(`features: ${reference},`) }).toEqual({ file, declares: true });
    }
    // The two SQS files run the one builder, each with its mode.
    expect(sqsConformanceTarget('queue').features).toBe(FEATURES['sqs (queue mode)']);
    expect(sqsConformanceTarget('sns').features).toBe(FEATURES['sqs (fan-out)']);
    for (const [file, mode] of [['sqs-queue.conformance.spec.ts', 'queue'], ['sqs-fanout.conformance.spec.ts', 'sns']]) {
      const source = readFileSync(join(__dirname, file), 'utf8');
      expect({ file, runs: source.includes(`runConformanceSuite(sqsConformanceTarget('${mode}'));`) }).toEqual({ file, runs: true });
    }
  });
});
