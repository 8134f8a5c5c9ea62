// Runs one code execution through LibreChat's own tool (@librechat/agents createCodeExecutionTool)
// against LIBRECHAT_CODE_BASEURL, and prints {content, artifact} (or {error}) as one JSON line.
// Input (stdin, JSON): {apiKey, args: {lang, code, ...}, files?: [CodeEnvFile], params?: {...}}.
const { createCodeExecutionTool } = require('@librechat/agents');

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const input = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  const tool = createCodeExecutionTool({
    authHeaders: { 'X-API-Key': input.apiKey },
    ...(input.files ? { files: input.files } : {}),
    ...(input.params || {}),  // more fields of the /exec body (user_id, entity_id, session_id)
  });
  try {
    const message = await tool.invoke({ id: 'call_1', name: tool.name, type: 'tool_call', args: input.args });
    process.stdout.write(JSON.stringify({ content: message.content, artifact: message.artifact }) + '\n');
  } catch (error) {
    process.stdout.write(JSON.stringify({ error: String(error && error.message ? error.message : error) }) + '\n');
  }
}

main();
