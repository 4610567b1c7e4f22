// Starts fauxqs (an SQS and SNS emulator from npm, kept in memory) on 127.0.0.1 with a free port,
// prints its address as the first line on stdout, and stops when its standard input ends: the
// test setup holds the other end, so it never outlives the test run. It is an ES module only,
// hence a launcher of its own instead of loading it into Jest. buildApp rather than startFauxqs,
// which listens on every interface: a test server stays on loopback.
import { URL } from 'node:url';
import { buildApp } from 'fauxqs';

// fauxqs 1.9.2 refuses message bodies with characters beyond the Basic Multilingual Plane (an
// emoji), which real SQS takes: its documented set is #x9 | #xA | #xD | #x20 to #xD7FF | #xE000
// to #xFFFD | #x10000 to #x10FFFF. Its check is given SQS's set, so that the tests see the bytes
// SQS would keep; the adapter's fallback for an endpoint that refuses them is tested with a stand-in.
const types = await import(new URL('./sqs/sqsTypes.js', import.meta.resolve('fauxqs')).href);
if (!(types.INVALID_MESSAGE_BODY_CHAR instanceof RegExp)) throw new Error('fauxqs: INVALID_MESSAGE_BODY_CHAR not found in dist/sqs/sqsTypes.js (another version?)');
// eslint-disable-next-line no-control-regex -- the control characters SQS takes are the point
const outsideSqsCharacters = /[^\x09\x0A\x0D\x20-\uD7FF\uE000-\uFFFD\u{10000}-\u{10FFFF}]/u;
types.INVALID_MESSAGE_BODY_CHAR.test = (text) => outsideSqsCharacters.test(text);

const app = buildApp({ logger: false });
await app.listen({ port: 0, host: '127.0.0.1' });
process.stdout.write(`http://127.0.0.1:${app.server.address().port}\n`);
process.stdin.resume();
process.stdin.on('end', async () => {
  await app.close();
  process.exit(0);
});
