/**
 * Keeps the documentation honest: the README's quick start is one complete program that compiles
 * under `strict` against the library's sources (`@ductape/nestjs-broker` mapped to lib/index.ts) and
 * runs on the embedded broker; every other TypeScript block of README.md and docs/*.md compiles too;
 * every relative link there resolves.
 *
 * Markers, on the line before a code fence:
 *   <!-- quickstart ... -->  this block is (part of) the quick-start program, compiled and run;
 *   <!-- fragment ... -->    this block is not a whole module: not compiled (say so in the text too).
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ts from 'typescript';

const ROOT = path.resolve(__dirname, '..');
const LIBRARY = path.join(ROOT, 'lib', 'index.ts');
const PACKAGE_NAME = '@ductape/nestjs-broker';
const QUICKSTART_MARKER = /^<!--\s*quickstart\b/;
const FRAGMENT_MARKER = /^<!--\s*fragment\b/;

/** The Markdown files a reader of the repository gets: README.md and docs/*.md. */
function documentationFiles(): string[] {
  const docs = path.join(ROOT, 'docs');
  const pages = fs.existsSync(docs)
    ? fs.readdirSync(docs).filter((name) => name.endsWith('.md')).map((name) => path.join(docs, name))
    : [];
  return [path.join(ROOT, 'README.md'), ...pages.sort()];
}

interface CodeBlock {
  /** The Markdown file, relative to the repository. */
  file: string;
  /** 1-based line of the block's first code line in that file. */
  line: number;
  lang: string;
  code: string;
  /** The marker comment right before the fence, if any. */
  marker: string | undefined;
}

/** The fenced code blocks of a Markdown file, with the HTML comment (if any) on the line before each fence. */
function codeBlocks(file: string): CodeBlock[] {
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  const blocks: CodeBlock[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^(\s*)(`{3,}|~{3,})\s*([\w-]*)/.exec(lines[i]);
    if (!open) continue;
    const fence = open[2];
    const start = i + 1;
    let end = start;
    while (end < lines.length && !lines[end].trim().startsWith(fence)) end++;
    let previous = i - 1;
    while (previous >= 0 && lines[previous].trim() === '') previous--;
    const before = previous >= 0 ? lines[previous].trim() : '';
    blocks.push({
      file: path.relative(ROOT, file),
      line: start + 1,
      lang: open[3].toLowerCase(),
      code: lines.slice(start, end).join('\n'),
      marker: before.startsWith('<!--') ? before : undefined,
    });
    i = end;
  }
  return blocks;
}

const isTypeScript = (block: CodeBlock): boolean => block.lang === 'ts' || block.lang === 'typescript';
const isQuickStart = (block: CodeBlock): boolean => block.marker !== undefined && QUICKSTART_MARKER.test(block.marker);
const isFragment = (block: CodeBlock): boolean => block.marker !== undefined && FRAGMENT_MARKER.test(block.marker);

/** The project's compiler options (decorators and all), made strict, with the package name mapped to lib/index.ts. */
function compilerOptions(): ts.CompilerOptions {
  const parsed = ts.getParsedCommandLineOfConfigFile(path.join(ROOT, 'tsconfig.json'), {}, {
    ...ts.sys,
    onUnRecoverableConfigFileDiagnostic: (diagnostic) => {
      throw new Error(ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n'));
    },
  });
  if (!parsed) throw new Error('tsconfig.json could not be read');
  return {
    ...parsed.options,
    strict: true,
    noEmit: true,
    declaration: false,
    sourceMap: false,
    types: ['node'],
    baseUrl: ROOT,
    // The package's entry points (package.json "exports"): '.', and './health', './testing' as lib/<name>/index.ts.
    paths: { [PACKAGE_NAME]: [path.relative(ROOT, LIBRARY)], [`${PACKAGE_NAME}/*`]: ['lib/*/index.ts'] },
  };
}

/** A virtual source file per block, in the repository's folder so that node_modules resolves. */
function virtualPath(block: CodeBlock, index: number): string {
  return path.join(ROOT, '.doc-snippets', `${block.file.replace(/[\\/]/g, '_')}.${block.line}.${index}.ts`);
}

interface Compiled {
  /** One line per error: `file:line: message`, the line being that of the Markdown file. */
  errors: string[];
}

/** Type-checks each `[virtual path, code, block]` as its own module; errors of the library itself are `npm run typecheck`'s. */
function compile(sources: { file: string; code: string; block: CodeBlock }[]): Compiled {
  const options = compilerOptions();
  const host = ts.createCompilerHost(options, true);
  const byPath = new Map(sources.map((source) => [path.normalize(source.file), source]));
  const { getSourceFile, fileExists, readFile } = host;
  host.fileExists = (file) => byPath.has(path.normalize(file)) || fileExists.call(host, file);
  host.readFile = (file) => byPath.get(path.normalize(file))?.code ?? readFile.call(host, file);
  host.getSourceFile = (file, languageVersion, onError, shouldCreate) => {
    const source = byPath.get(path.normalize(file));
    return source
      ? ts.createSourceFile(file, source.code, languageVersion, true, ts.ScriptKind.TS)
      : getSourceFile.call(host, file, languageVersion, onError, shouldCreate);
  };
  const program = ts.createProgram({ rootNames: sources.map((source) => source.file), options, host });
  const errors: string[] = [];
  const diagnostics = [...program.getOptionsDiagnostics(), ...program.getGlobalDiagnostics()];
  for (const source of sources) {
    const sourceFile = program.getSourceFile(source.file);
    if (!sourceFile) throw new Error(`${source.block.file}:${source.block.line}: not in the program`);
    diagnostics.push(...program.getSyntacticDiagnostics(sourceFile), ...program.getSemanticDiagnostics(sourceFile));
  }
  for (const diagnostic of diagnostics) {
    const text = ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n');
    const source = diagnostic.file && byPath.get(path.normalize(diagnostic.file.fileName));
    if (source && diagnostic.start !== undefined) {
      const { line, character } = diagnostic.file!.getLineAndCharacterOfPosition(diagnostic.start);
      errors.push(`${source.block.file}:${source.block.line + line}:${character + 1}: TS${diagnostic.code}: ${text}`);
    } else {
      errors.push(`TS${diagnostic.code}: ${text}`);
    }
  }
  return { errors };
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs the quick start as a user would, on the embedded broker: the program with the package name
 * pointed at lib/index.ts, transpiled with the project's options (decorator metadata included), and
 * the library loaded from its sources through ts-node.
 */
async function runQuickStart(code: string): Promise<Run> {
  const dir = fs.mkdtempSync(path.join(ROOT, 'node_modules', '.cache-readme-quickstart-'));
  try {
    const library = path.relative(dir, LIBRARY.replace(/\.ts$/, '')).split(path.sep).join('/');
    const source = code.replace(/(['"])@ductape\/nestjs-broker\1/g, `'${library}'`);
    const { outputText } = ts.transpileModule(source, {
      compilerOptions: { ...compilerOptions(), noEmit: false, paths: undefined },
      fileName: 'main.ts',
    });
    const main = path.join(dir, 'main.js');
    fs.writeFileSync(main, outputText);
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      NO_COLOR: '1',
      TS_NODE_PROJECT: path.join(ROOT, 'tsconfig.json'),
      TS_NODE_TRANSPILE_ONLY: 'true',
    };
    delete env.DUCTAPE_ENV;
    delete env.FORCE_COLOR;
    return await new Promise<Run>((resolve) => {
      execFile(
        process.execPath,
        ['-r', require.resolve('ts-node/register/transpile-only'), main],
        { cwd: ROOT, env, timeout: 30_000 },
        (error, stdout, stderr) => {
          const exitCode = error ? (typeof error.code === 'number' ? error.code : null) : 0;
          resolve({ code: exitCode, stdout, stderr });
        },
      );
    });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens. */
function slug(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, '')
    .replace(/\s/g, '-');
}

function anchors(file: string): Set<string> {
  const text = fs.readFileSync(file, 'utf8').replace(/^(`{3,}|~{3,})[\s\S]*?^\1/gm, '');
  const seen = new Map<string, number>();
  const result = new Set<string>();
  for (const match of text.matchAll(/^#{1,6}\s+(.+?)\s*#*$/gm)) {
    const base = slug(match[1]);
    const count = seen.get(base) ?? 0;
    seen.set(base, count + 1);
    result.add(count === 0 ? base : `${base}-${count}`);
  }
  return result;
}

/** Relative links (and anchors) of a Markdown file that point nowhere. */
function brokenLinks(file: string): string[] {
  const text = fs.readFileSync(file, 'utf8').replace(/^(`{3,}|~{3,})[\s\S]*?^\1/gm, '');
  const broken: string[] = [];
  for (const match of text.matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)) {
    const target = match[1];
    if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue; // https:, mailto:, ...
    const [pathPart, anchor] = target.split('#', 2);
    const resolved = pathPart ? path.resolve(path.dirname(file), decodeURIComponent(pathPart)) : file;
    const where = `${path.relative(ROOT, file)}: (${target})`;
    if (!resolved.startsWith(ROOT + path.sep) && resolved !== ROOT) broken.push(`${where} leaves the repository`);
    else if (!fs.existsSync(resolved)) broken.push(`${where} does not exist`);
    else if (anchor && resolved.endsWith('.md') && !anchors(resolved).has(anchor)) broken.push(`${where}: no such heading`);
  }
  return broken;
}

describe('README and docs', () => {
  const files = documentationFiles();
  const blocks = files.flatMap(codeBlocks);
  const quickStart = blocks.filter(isQuickStart);
  const others = blocks.filter((block) => isTypeScript(block) && !isQuickStart(block) && !isFragment(block));

  it('has a quick start in README.md, marked, in TypeScript', () => {
    expect(quickStart.length).toBeGreaterThan(0);
    for (const block of quickStart) {
      expect(`${block.file} ${block.lang}`).toBe('README.md ts');
    }
  });

  it("states the repository's two commands and how to install the package", () => {
    const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    expect(readme).toContain('npm install && npm start');
    expect(readme).toContain('npm test');
    expect(readme).toContain(`npm install ${PACKAGE_NAME}`);
    const { peerDependencies } = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as {
      peerDependencies: Record<string, string>;
    };
    const missing = Object.keys(peerDependencies).filter((name) => !readme.includes(name));
    expect(missing).toEqual([]);
  });

  it('compiles the quick start as one program, and every other TypeScript block, under strict', () => {
    const program = quickStart.map((block) => block.code).join('\n');
    const sources = [
      ...(quickStart.length > 0 ? [{ file: virtualPath(quickStart[0], 0), code: program, block: quickStart[0] }] : []),
      ...others.map((block, index) => ({ file: virtualPath(block, index + 1), code: block.code, block })),
    ];
    // Every snippet imports only what the package exports.
    for (const { code, block } of sources) {
      for (const match of code.matchAll(/from\s+['"](\.{1,2}\/[^'"]*|[^'"]*\/lib(?:\/[^'"]*)?)['"]/g)) {
        throw new Error(`${block.file}:${block.line}: imports '${match[1]}'; use '${PACKAGE_NAME}'`);
      }
    }
    const { errors } = compile(sources);
    expect(errors).toEqual([]);
  });

  it('runs the quick start on the embedded broker: the published order reaches the listener', async () => {
    const run = await runQuickStart(quickStart.map((block) => block.code).join('\n'));
    const output = `${run.stdout}\n${run.stderr}`;
    const received = /invoicing order 42\b/.test(output); // the listener's log line
    const published = /published order 42 as \S+/.test(output);
    const verdict = run.code === 0 && received && published ? 'ok' : `exit code ${run.code}, received ${received}, published ${published}`;
    expect(`${verdict}${verdict === 'ok' ? '' : `; output:\n${output.slice(-4000)}`}`).toBe('ok');
  }, 40_000);

  it('has relative links that resolve, and cites no file a user does not have', () => {
    const problems = files.flatMap(brokenLinks);
    for (const file of files) {
      const text = fs.readFileSync(file, 'utf8');
      for (const cited of ['DESIGN.md', '/work/']) {
        if (text.includes(cited)) problems.push(`${path.relative(ROOT, file)} cites ${cited}`);
      }
      if (/\bissue \d+\b/i.test(text)) problems.push(`${path.relative(ROOT, file)} cites an issue number`);
    }
    expect(fs.existsSync(path.join(ROOT, 'LICENSE'))).toBe(true);
    expect(problems).toEqual([]);
  });
});
