// stdin:  {"key": <key-registry entry>, "message_type": "...", "schema_version": 1,
//          "payload": {...}, "header": {optional header fields to set, e.g. message_id}}
// stdout: {"jwe": "<compact serialization>", "header": {<the protected header>}}
import { protectedHeader, readStdinJson, seal } from './envelope.mjs';

const input = await readStdinJson();
const header = protectedHeader(
  input.key,
  input.message_type,
  input.schema_version,
  input.payload,
  input.header ?? {},
);
const jwe = await seal(input.key, header, input.payload);
process.stdout.write(`${JSON.stringify({ jwe, header })}\n`);
