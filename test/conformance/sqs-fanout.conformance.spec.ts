import { deleteCreatedSqsResourcesAfterAll } from '../support/sqs';
import { runConformanceSuite } from './conformance.suite';
import { sqsConformanceTarget } from './sqs-target';

// Fan-out mode: an SNS topic per topic, and one SQS queue per group subscribed to it.
// Every test names its topics with a fresh random tag; the file deletes exactly the queues,
// topics and subscriptions it created.
deleteCreatedSqsResourcesAfterAll();

runConformanceSuite(sqsConformanceTarget('sns'));
