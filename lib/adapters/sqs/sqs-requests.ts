import { describeError, redactSecrets } from '../../errors';

/**
 * SQS and SNS requests whose failures name the operation, the queue and the endpoint, never a
 * credential: any configured secret is cut out of the error text.
 */
export class SqsRequests {
  constructor(
    /** Where requests go, without credentials. */
    readonly endpoint: string,
    private readonly secrets: string[],
  ) {}

  /** An SQS request whose failure names the operation and the queue; a missing queue says so plainly. */
  async request<T>(operation: string, target: string, work: () => Promise<T>): Promise<T> {
    try {
      return await work();
    } catch (error) {
      if (isMissingQueue(error)) throw new Error(`SQS ${operation}: queue ${redactSecrets(target)} does not exist at ${this.endpoint}`);
      throw this.failure(`SQS ${operation} on ${redactSecrets(target)} failed`, error);
    }
  }

  /** An error that names the endpoint and the AWS error, with any configured secret cut out. */
  failure(context: string, error: unknown): Error {
    const name = errorName(error);
    const hint = CREDENTIAL_ERRORS.has(name) ? ' (the credentials were rejected)' : '';
    let text = `${context} at ${this.endpoint}${hint}: ${describeError(error)}`;
    for (const secret of this.secrets) text = text.split(secret).join('***');
    return new Error(text);
  }
}

/** AWS error names that mean the credentials were refused. */
const CREDENTIAL_ERRORS = new Set([
  'InvalidClientTokenId',
  'SignatureDoesNotMatch',
  'UnrecognizedClientException',
  'InvalidAccessKeyId',
  'ExpiredToken',
  'ExpiredTokenException',
  'IncompleteSignature',
  'CredentialsProviderError',
  'InvalidSecurity',
]);

export function errorName(error: unknown): string {
  if (typeof error !== 'object' || error === null) return '';
  const candidate = error as { name?: unknown; Code?: unknown; code?: unknown };
  const name = [candidate.Code, candidate.name, candidate.code].find((value) => typeof value === 'string');
  return typeof name === 'string' ? name : '';
}

export function isMissingQueue(error: unknown): boolean {
  const name = errorName(error);
  return name === 'QueueDoesNotExist' || name === 'AWS.SimpleQueueService.NonExistentQueue' || name === 'NonExistentQueue';
}
