import type { ArgumentsHost } from '@nestjs/common';
// Not in the package's index, but where every RPC handler's filters run from (Nest 11).
import { RpcExceptionsHandler } from '@nestjs/microservices/exceptions/rpc-exceptions-handler';
import type { Observable } from 'rxjs';
import { NonRetryableError, type NonRetryableReason } from '../errors';
import { DuctapeBrokerContext } from './ductape-broker.context';

/**
 * Nest's RPC exception handling replaces any error but an RpcException with
 * `{ status: 'error', message: 'Internal server error' }` before the transport sees it, so a
 * NonRetryableError (and the text of any other error) would be lost to the delivery layer. The
 * `handle` of RpcExceptionsHandler (which runs a handler's exception filters, custom ones and the
 * default) is wrapped, once per process, to record the original error of a call served by
 * DuctapeBrokerServer (its host's context is a DuctapeBrokerContext, one per call); what it
 * answers is unchanged, for every transport. The server reads the record back when the filters'
 * answer reaches it.
 */
const captured = new WeakMap<DuctapeBrokerContext, unknown>();
const INSTALLED = Symbol.for('@ductape/nestjs-broker:rpc-error-capture');

/** What Nest's default filter answers for an error that is not an RpcException. */
const UNKNOWN_ERROR_MESSAGE = 'Internal server error';

type Handle = (this: RpcExceptionsHandler, exception: unknown, host: ArgumentsHost) => Observable<unknown>;

export function installRpcErrorCapture(): void {
  const prototype = RpcExceptionsHandler.prototype as unknown as Record<PropertyKey, unknown> & { handle: Handle };
  if (prototype[INSTALLED]) return;
  const original = prototype.handle;
  prototype.handle = function (this: RpcExceptionsHandler, exception: unknown, host: ArgumentsHost): Observable<unknown> {
    record(exception, host);
    return original.call(this, exception, host);
  };
  prototype[INSTALLED] = true;
}

function record(exception: unknown, host: ArgumentsHost): void {
  try {
    const context: unknown = host.getArgByIndex(1);
    if (context instanceof DuctapeBrokerContext) captured.set(context, exception);
  } catch {
    // A host of another shape: nothing to record, and the filter must still answer.
  }
}

/**
 * The error a failed call of a handler is settled with: what came out of Nest's handler chain
 * (`answer`), or the original error a filter turned into its answer.
 *  - a NonRetryableError was thrown: it stands, whatever a filter made of it (as for
 *    `@OnBrokerEvent` handlers), so the message goes to the dead letters at once;
 *  - an Error came out (no filter touched it, or a filter threw one): that error;
 *  - the default filter's 'Internal server error' came out: the original error, so the dead letter
 *    keeps its text;
 *  - any other object (an RpcException's, a custom filter's): an Error with its message.
 * A NonRetryableError of another copy of this package (the same name) becomes one of this copy.
 */
export function settledError(answer: unknown, context: DuctapeBrokerContext): Error {
  const original = captured.get(context);
  captured.delete(context);
  const nonRetryable = asNonRetryable(original) ?? asNonRetryable(answer);
  if (nonRetryable) return nonRetryable;
  if (answer instanceof Error) return answer;
  if (original !== undefined && isDefaultAnswer(answer)) return original instanceof Error ? original : errorOf(original);
  return errorOf(answer);
}

/** Forgets what was recorded for a call that succeeded after all (a filter that answered). */
export function forgetCaptured(context: DuctapeBrokerContext): void {
  captured.delete(context);
}

function asNonRetryable(error: unknown): NonRetryableError | undefined {
  if (error instanceof NonRetryableError) return error;
  if (!(error instanceof Error) || error.name !== 'NonRetryableError') return undefined;
  const reason = (error as { reason?: unknown }).reason;
  return new NonRetryableError(error.message, { cause: error, reason: isReason(reason) ? reason : 'non-retryable' });
}

function isReason(value: unknown): value is NonRetryableReason {
  return value === 'non-retryable' || value === 'guard' || value === 'validation';
}

function isDefaultAnswer(answer: unknown): boolean {
  if (typeof answer !== 'object' || answer === null) return false;
  const { status, message } = answer as { status?: unknown; message?: unknown };
  return status === 'error' && message === UNKNOWN_ERROR_MESSAGE && Object.keys(answer).length === 2;
}

/** An Error for a thrown value that is not one: its `message` if it has one, else its JSON. */
function errorOf(value: unknown): Error {
  const message = typeof value === 'object' && value !== null && 'message' in value ? value.message : value;
  let text: string;
  try {
    text = typeof message === 'string' ? message : (JSON.stringify(message) ?? String(message));
  } catch {
    text = String(message);
  }
  return new Error(text, { cause: value });
}
