export { createSqsAdapter, SqsAdapter, sqsCapabilities, SQS_DEFAULTS, MAX_DELAY_SECONDS, DEFAULT_MESSAGE_GROUP } from './sqs.adapter';
export { MAX_ATTRIBUTES, MAX_MESSAGE_BYTES, OVERFLOW_ATTRIBUTE } from './sqs-attributes';
export { topicQueueName, groupQueueName, snsTopicName, deadLetterQueueName } from './sqs-names';
