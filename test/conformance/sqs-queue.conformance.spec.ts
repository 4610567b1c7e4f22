import { deleteCreatedSqsResourcesAfterAll } from '../support/sqs';
import { runConformanceSuite } from './conformance.suite';
import { sqsConformanceTarget } from './sqs-target';

// Queue mode (Ductape's shape): a topic is one SQS queue, so there is no fan-out across groups.
// Every test names its topics with a fresh random tag; the file deletes exactly the queues,
// topics and subscriptions it created.
deleteCreatedSqsResourcesAfterAll();

runConformanceSuite(sqsConformanceTarget('queue'));
