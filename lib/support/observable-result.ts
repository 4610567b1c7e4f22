import { isObservable, lastValueFrom } from 'rxjs';

/**
 * What a handler, an interceptor chain or an exception filter answered, awaited the way a broker
 * handler's result is: an Observable by its last value, and one that completes without a value
 * (EMPTY: the message was handled, a duplicate skipped) as done rather than an EmptyError; an
 * Observable that errors rejects with its error. Anything else as it is.
 */
export function observableResult(result: unknown): unknown {
  return isObservable(result) ? lastValueFrom(result, { defaultValue: undefined }) : result;
}
