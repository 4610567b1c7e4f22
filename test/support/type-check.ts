import { join } from 'node:path';
import * as ts from 'typescript';

export interface Reported {
  /** The text the diagnostic points at. */
  at: string;
  /** Line of the snippet (1-based, after the import line). */
  line: number;
  message: string;
}

/**
 * Type-checks each snippet as a file of `dir` (so it imports the library by a relative path), with
 * `header` before it, under `strict` as a user's project would; returns each one's diagnostics.
 */
export function typeCheckSnippets(dir: string, header: string, snippets: Record<string, string>, extra: ts.CompilerOptions = {}): Record<string, Reported[]> {
  const options: ts.CompilerOptions = {
    strict: true,
    noEmit: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.CommonJS,
    moduleResolution: ts.ModuleResolutionKind.Node10,
    lib: ['lib.es2022.d.ts'],
    types: ['node'],
    skipLibCheck: true,
    ...extra,
  };
  const files = new Map(Object.entries(snippets).map(([name, body]) => [join(dir, `${name}.ts`), header + body]));
  const host = ts.createCompilerHost(options);
  const { getSourceFile, fileExists, readFile } = host;
  host.fileExists = (file) => files.has(file) || fileExists.call(host, file);
  host.readFile = (file) => files.get(file) ?? readFile.call(host, file);
  host.getSourceFile = (file, language, ...rest) => {
    const text = files.get(file);
    return text !== undefined ? ts.createSourceFile(file, text, language) : getSourceFile.call(host, file, language, ...rest);
  };
  const program = ts.createProgram([...files.keys()], options, host);
  const reported: Record<string, Reported[]> = {};
  for (const [name] of Object.entries(snippets)) {
    const source = program.getSourceFile(join(dir, `${name}.ts`))!;
    reported[name] = [...program.getSyntacticDiagnostics(source), ...program.getSemanticDiagnostics(source)].map((diagnostic) => ({
      at: source.text.slice(diagnostic.start, (diagnostic.start ?? 0) + (diagnostic.length ?? 0)),
      line: source.getLineAndCharacterOfPosition(diagnostic.start ?? 0).line,
      message: ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n'),
    }));
  }
  return reported;
}
