// Drives the proxy with one real Node client and prints what the application could see.
//
// stdin: one JSON object
//   {"client": "openai" | "openai-responses" | "ai" | "ai-responses" | "ai-chat" | "anthropic",
//    "base_url": "http://127.0.0.1:PORT/v1" (for anthropic the root, without /v1),
//    "api_key": "...", "model": "...", "messages": [...], "stream": bool,
//    "body": {extra request fields}, "naive": bool, "helper": bool, "plain": bool}
// stdout: one JSON line
//   {"content", "finish_reason", "raw_finish_reason", "moderation", "action", "usage", "chunks",
//    "error": null | {"name", "status", "code", "message", "moderation"},
//    "final": null | {"finish_reason", "content", "moderation"}}
// Exit status 0 whenever the line was printed (also when the client threw); 2 for unreadable input.
//
// openai: `client.chat.completions.create(...).withResponse()`; extra `body` fields are sent as
//   request params. moderation = `completion.moderation`, or the `moderation` of the stream chunk
//   carrying it; action = `response.headers` (or `err.headers`); errors: `err.status`,
//   `err.code`, `err.error.moderation`. `naive` (stream only) reads `chunk.choices[0].delta`
//   unguarded, as most code does.
// openai-responses: `client.responses.create({model, input: messages}).withResponse()` (whole,
//   or `stream: true`: its events); `helper` (stream only) uses `client.responses.stream(...)`,
//   then `finalResponse()`, whose status, text and moderation are `final` (or the error it
//   throws, as `final.error`). moderation = `response.moderation`, or the `response.moderation`
//   of the `response.completed` / `response.incomplete` event; finish_reason = the status, or
//   `incomplete_details.reason` for an incomplete response; errors as for openai.
// ai: `generateText` / `streamText` (`fullStream`) on `createOpenAICompatible(...).chatModel(model)`
//   with `maxRetries: 0`; `body.stream_options.include_usage` -> the provider's `includeUsage`;
//   every other `body` field -> `providerOptions.guardproxy` (copied into the request body);
//   moderation = `providerMetadata.guardproxy.moderation`, put there by a `metadataExtractor`;
//   action = `response.headers` (or `APICallError.responseHeaders`); HTTP errors: `statusCode`,
//   `data.error.code`, the moderation parsed from `responseBody`; in-band stream errors arrive
//   as `error` parts of `fullStream`. finish_reason is the SDK's unified reason
//   ("content-filter"), raw_finish_reason the wire value ("content_filter").
// ai-responses: `generateText` / `streamText` (`fullStream`) on the default OpenAI provider,
//   `createOpenAI(...)(model)`, which is its Responses model (POST /responses), with
//   `maxRetries: 0`, `providerOptions.openai.store = false` (earlier output goes back as whole
//   messages, never as `item_reference` items, which the proxy refuses) and
//   `forceReasoning = false` (with `store: false` a model id it takes for a reasoning model
//   would otherwise add `include: ["reasoning.encrypted_content"]`, which the proxy refuses).
//   Every other `body` field (but `stream` and `stream_options`: a Responses stream always ends
//   with its usage) goes to `providerOptions.openai`, whose schema keeps only the provider's
//   own options: the rest is not sent, and a note on stderr names it. raw_finish_reason is
//   `incomplete_details.reason`. moderation = `response.body.moderation` (generateText), or
//   `response.moderation` of the raw `response.completed` / `response.incomplete` /
//   `response.failed` event (streamText with `includeRawChunks`); action = `response.headers`;
//   HTTP errors as for ai; in-band stream errors arrive as `error` parts holding
//   `{message, code, statusCode, data: <the event>}`, whose parsed copy of the event has lost
//   `moderation` (taken from the raw event instead); a `response.failed` before any output is
//   thrown as an APICallError without it. `plain` sends no provider options at all: the
//   provider as it comes, configured with nothing but its base URL and key.
// ai-chat: `generateText` / `streamText` (`fullStream`) on the default OpenAI provider's chat
//   model, `createOpenAI(...).chat(model)` (POST /chat/completions), with `maxRetries: 0`; extra
//   `body` fields go to `providerOptions.openai` (its own options only, as for ai-responses).
//   moderation = `response.body.moderation` (generateText), or the `moderation` of the raw chunk
//   carrying it (streamText with `includeRawChunks`: the parsed parts drop it); errors as for ai.
// anthropic: @anthropic-ai/sdk, `client.messages.create(...).withResponse()` (whole, or
//   `stream: true`: its events), with `maxRetries: 0` and `max_tokens` 300 unless `body` sets it;
//   `helper` (stream only) uses `client.messages.stream(...)`, then `finalMessage()`, whose
//   stop reason, text and moderation are `final`. moderation = `message.moderation` (present at
//   run time, not in the TypeScript type), or the `moderation` of the `message_delta` event;
//   finish_reason = `stop_reason`; action = `response.headers` (or `err.headers`); errors:
//   `err.status`, `err.type`, the moderation in `err.error.error.moderation` (the body).

import OpenAI from "openai";
import Anthropic from "@anthropic-ai/sdk";
import { generateText, streamText } from "ai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { createOpenAI } from "@ai-sdk/openai";

const PROVIDER = "guardproxy";
const CLIENTS = ["openai", "openai-responses", "ai", "ai-responses", "ai-chat", "anthropic"];

function readStdin() {
  return new Promise((resolve, reject) => {
    const parts = [];
    process.stdin.on("data", (part) => parts.push(part));
    process.stdin.on("end", () => resolve(Buffer.concat(parts).toString("utf8")));
    process.stdin.on("error", reject);
  });
}

function newResult() {
  return {
    content: null,
    finish_reason: null,
    raw_finish_reason: null,
    moderation: null,
    action: null,
    usage: null,
    chunks: 0,
    error: null,
    final: null,
  };
}

function className(err) {
  if (err === null || err === undefined) return String(err);
  // bundlers may prefix a class name (the AI SDK's `_TypeValidationError`)
  return (err.constructor?.name || typeof err).replace(/^_+/, "");
}

function messageOf(err) {
  if (err instanceof Error) return err.message;
  if (typeof err?.message === "string") return err.message;
  try {
    return JSON.stringify(err);
  } catch {
    return String(err);
  }
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function headerOf(headers, name) {
  if (!headers) return null;
  if (typeof headers.get === "function") return headers.get(name);
  const wanted = name.toLowerCase();
  for (const [key, value] of Object.entries(headers)) {
    if (key.toLowerCase() === wanted) return value;
  }
  return null;
}

// -- openai ------------------------------------------------------------------------

function openaiError(err) {
  const body = isObject(err?.error) ? err.error : null; // APIError.error: the body's `error` object
  return {
    name: className(err),
    status: typeof err?.status === "number" ? err.status : null,
    code: err?.code ?? null,
    message: messageOf(err),
    moderation: isObject(body?.moderation) ? body.moderation : null,
  };
}

async function runOpenAI(input, out) {
  const client = new OpenAI({ baseURL: input.base_url, apiKey: input.api_key, maxRetries: 0 });
  const params = { ...(input.body ?? {}), model: input.model, messages: input.messages };
  try {
    if (!input.stream) {
      const { data, response } = await client.chat.completions.create(params).withResponse();
      out.action = response.headers.get("x-guard-action");
      const choice = data.choices?.[0];
      out.content = choice?.message?.content ?? null;
      out.finish_reason = out.raw_finish_reason = choice?.finish_reason ?? null;
      out.moderation = data.moderation ?? null;
      out.usage = data.usage ?? null;
      return;
    }
    const { data: stream, response } = await client.chat.completions
      .create({ ...params, stream: true })
      .withResponse();
    out.action = response.headers.get("x-guard-action");
    if (input.naive) {
      let text = "";
      const usageAsked = input.body?.stream_options?.include_usage === true;
      for await (const chunk of stream) {
        out.chunks += 1;
        if (usageAsked && chunk.choices.length === 0) {
          // the usage chunk the request asked for: code that asks for it expects it
          if (chunk.moderation) out.moderation = chunk.moderation;
          out.usage = chunk.usage ?? null;
          continue;
        }
        text += chunk.choices[0].delta.content ?? ""; // the unguarded line most code has
        out.content = text;
        if (chunk.choices[0].finish_reason) {
          out.finish_reason = out.raw_finish_reason = chunk.choices[0].finish_reason;
        }
        if (chunk.moderation) out.moderation = chunk.moderation;
        if (chunk.usage) out.usage = chunk.usage;
      }
      return;
    }
    for await (const chunk of stream) {
      out.chunks += 1;
      for (const choice of chunk.choices ?? []) {
        if ((choice.index ?? 0) !== 0) continue;
        const piece = choice.delta?.content;
        if (typeof piece === "string") out.content = (out.content ?? "") + piece;
        if (choice.finish_reason) out.finish_reason = out.raw_finish_reason = choice.finish_reason;
      }
      if (chunk.moderation) out.moderation = chunk.moderation;
      if (chunk.usage) out.usage = chunk.usage;
    }
  } catch (err) {
    out.error = openaiError(err);
    if (out.action === null) out.action = headerOf(err?.headers, "x-guard-action");
  }
}

// -- openai-responses (the openai SDK's Responses API) ------------------------------------------

function readResponse(response, out) {
  const details = response?.incomplete_details;
  out.finish_reason = out.raw_finish_reason =
    response?.status === "incomplete" && details?.reason ? details.reason : response?.status ?? null;
  out.moderation = isObject(response?.moderation) ? response.moderation : null;
  out.usage = response?.usage ?? null;
}

function readResponseEvent(event, out) {
  out.chunks += 1;
  if (event.type === "response.output_text.delta") {
    out.content = (out.content ?? "") + event.delta;
  } else if (event.type === "response.completed" || event.type === "response.incomplete") {
    readResponse(event.response, out);
  }
}

async function runOpenAIResponses(input, out) {
  const client = new OpenAI({ baseURL: input.base_url, apiKey: input.api_key, maxRetries: 0 });
  const params = { ...(input.body ?? {}), model: input.model, input: input.messages };
  try {
    if (input.stream && input.helper) {
      const stream = client.responses.stream(params);
      for await (const event of stream) readResponseEvent(event, out);
      try {
        const final = await stream.finalResponse();
        out.final = { finish_reason: final.status ?? null, content: final.output_text ?? null,
                      moderation: isObject(final.moderation) ? final.moderation : null };
      } catch (err) {
        out.final = { error: { name: className(err), message: messageOf(err) } };
      }
      return;
    }
    const { data, response } = await client.responses
      .create({ ...params, stream: input.stream === true })
      .withResponse();
    out.action = response.headers.get("x-guard-action");
    if (!input.stream) {
      out.content = data.output_text ?? null;
      readResponse(data, out);
      return;
    }
    for await (const event of data) readResponseEvent(event, out);
  } catch (err) {
    out.error = openaiError(err);
    if (out.action === null) out.action = headerOf(err?.headers, "x-guard-action");
  }
}

// -- ai (Vercel AI SDK) ------------------------------------------------------------

// The documented way to surface non-standard response fields: the provider's metadataExtractor
// puts them into `providerMetadata[PROVIDER]`.
const metadataExtractor = {
  extractMetadata: async ({ parsedBody }) => ({
    [PROVIDER]: { moderation: parsedBody?.moderation ?? null },
  }),
  createStreamExtractor: () => {
    let moderation = null;
    let errorModeration = null;
    return {
      processChunk(parsedChunk) {
        if (isObject(parsedChunk?.moderation)) moderation = parsedChunk.moderation;
        if (isObject(parsedChunk?.error?.moderation)) errorModeration = parsedChunk.error.moderation;
      },
      buildMetadata: () => ({ [PROVIDER]: { moderation, errorModeration } }),
    };
  },
};

function aiUsage(usage) {
  if (!usage) return null;
  const { inputTokens, outputTokens, totalTokens } = usage;
  if (inputTokens == null && outputTokens == null && totalTokens == null) return null;
  return usage;
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function aiError(err) {
  const parsed = typeof err?.responseBody === "string" ? parseJson(err.responseBody) : null;
  const inner = isObject(err) && !(err instanceof Error) ? err : null; // in-band: the error object
  const moderation = parsed?.error?.moderation ?? parsed?.moderation ?? inner?.moderation ?? null;
  const code = err?.data?.error?.code ?? parsed?.error?.code ?? inner?.code ?? null;
  return {
    name: className(err),
    status: typeof err?.statusCode === "number" ? err.statusCode : null,
    code: code === null ? null : String(code),
    message: messageOf(err),
    moderation: isObject(moderation) ? moderation : null,
  };
}

async function runAI(input, out) {
  const { stream_options: streamOptions, stream: _stream, ...extra } = input.body ?? {};
  const provider = createOpenAICompatible({
    name: PROVIDER,
    baseURL: input.base_url,
    apiKey: input.api_key,
    includeUsage: streamOptions?.include_usage === true,
    metadataExtractor,
  });
  const call = {
    model: provider.chatModel(input.model),
    messages: input.messages,
    maxRetries: 0,
    ...(Object.keys(extra).length ? { providerOptions: { [PROVIDER]: extra } } : {}),
  };
  if (!input.stream) {
    try {
      const result = await generateText(call);
      out.content = result.text;
      out.finish_reason = result.finishReason ?? null;
      out.raw_finish_reason = result.rawFinishReason ?? null;
      out.moderation = result.providerMetadata?.[PROVIDER]?.moderation ?? null;
      out.action = headerOf(result.response?.headers, "x-guard-action");
      out.usage = aiUsage(result.usage);
    } catch (err) {
      out.error = aiError(err);
      out.action = headerOf(err?.responseHeaders, "x-guard-action");
    }
    return;
  }
  let errorModeration = null;
  const result = streamText({ ...call, includeRawChunks: true, onError: () => {} });
  try {
    for await (const part of result.fullStream) {
      switch (part.type) {
        case "raw":
          if (!(isObject(part.rawValue) && "error" in part.rawValue)) out.chunks += 1;
          break;
        case "text-delta":
          out.content = (out.content ?? "") + part.text;
          break;
        case "finish-step": {
          const meta = part.providerMetadata?.[PROVIDER];
          if (meta?.moderation) out.moderation = meta.moderation;
          if (meta?.errorModeration) errorModeration = meta.errorModeration;
          out.action ??= headerOf(part.response?.headers, "x-guard-action");
          break;
        }
        case "finish":
          out.finish_reason = part.finishReason ?? null;
          out.raw_finish_reason = part.rawFinishReason ?? null;
          out.usage = aiUsage(part.totalUsage);
          break;
        case "error":
          out.error ??= aiError(part.error);
          out.action ??= headerOf(part.error?.responseHeaders, "x-guard-action");
          break;
        default:
          break;
      }
    }
  } catch (err) {
    out.error ??= aiError(err);
  }
  if (out.error && out.error.moderation === null && errorModeration) {
    out.error.moderation = errorModeration;
  }
}

// -- ai-responses (Vercel AI SDK, the default OpenAI provider: the Responses API) ------------

const FINAL_EVENTS = ["response.completed", "response.incomplete", "response.failed"];

// The moderation an error carries: an HTTP error's body (`error.moderation`), or an in-band
// error event (`{type: "error", error: {...}}`, or `response.failed` with `response.error`).
function responsesErrorModeration(body) {
  if (!isObject(body)) return null;
  for (const candidate of [
    body.error?.moderation,
    body.moderation,
    body.response?.error?.moderation,
    body.response?.moderation,
  ]) {
    if (isObject(candidate)) return candidate;
  }
  return null;
}

function aiResponsesError(err) {
  if (err instanceof Error) {
    // APICallError; `responseBody` is the body text (for an `error` in a 200 body, the SDK
    // passes the parsed object), `data` the parsed error
    const raw = err.responseBody;
    const parsed = typeof raw === "string" ? parseJson(raw) : isObject(raw) ? raw : null;
    const code = err.data?.error?.code ?? parsed?.error?.code ?? parsed?.response?.error?.code;
    return {
      name: className(err),
      status: typeof err.statusCode === "number" ? err.statusCode : null,
      code: code == null ? null : String(code),
      message: messageOf(err),
      moderation: responsesErrorModeration(parsed) ?? responsesErrorModeration(err.data),
    };
  }
  // in-band: the provider's flattened stream error, the event itself in `data`
  const code = err?.code ?? err?.data?.error?.code ?? err?.data?.response?.error?.code;
  return {
    name: className(err),
    status: typeof err?.statusCode === "number" ? err.statusCode : null,
    code: code == null ? null : String(code),
    message: messageOf(err),
    moderation: responsesErrorModeration(err?.data) ?? responsesErrorModeration(err),
  };
}

function noteUnsent(extra, sent) {
  if (!isObject(sent)) return;
  const missing = Object.keys(extra).filter((key) => !(key in sent) || sent[key] === undefined);
  if (missing.length) {
    const names = missing.join(", ");
    process.stderr.write(`drive.mjs: ai-responses: not a provider option, not sent: ${names}\n`);
  }
}

// A whole answer through generateText: what it said, its verdict and header, or the error
// (shaped by `errorOf`); returns the request body the provider sent.
async function aiWhole(call, out, errorOf) {
  try {
    const result = await generateText(call);
    out.content = result.text;
    out.finish_reason = result.finishReason ?? null;
    out.raw_finish_reason = result.rawFinishReason ?? null;
    const body = result.response?.body;
    out.moderation = isObject(body?.moderation) ? body.moderation : null;
    out.action = headerOf(result.response?.headers, "x-guard-action");
    out.usage = aiUsage(result.usage);
    return result.request?.body;
  } catch (err) {
    out.error = errorOf(err);
    out.action = headerOf(err?.responseHeaders, "x-guard-action");
    return err?.requestBodyValues;
  }
}

async function runAIResponses(input, out) {
  const { stream_options: _streamOptions, stream: _stream, ...extra } = input.body ?? {};
  const provider = createOpenAI({ baseURL: input.base_url, apiKey: input.api_key });
  const call = {
    model: provider(input.model), // = provider.responses(model)
    messages: input.messages,
    maxRetries: 0,
    ...(input.plain
      ? {}
      : { providerOptions: { openai: { ...extra, store: false, forceReasoning: false } } }),
  };
  const hasExtra = Object.keys(extra).length > 0;
  if (!input.stream) {
    const sent = await aiWhole(call, out, aiResponsesError);
    if (hasExtra) noteUnsent(extra, sent);
    return;
  }
  let errorModeration = null;
  let failedRequest = null;
  const result = streamText({ ...call, includeRawChunks: true, onError: () => {} });
  try {
    for await (const part of result.fullStream) {
      switch (part.type) {
        case "raw": {
          const event = part.rawValue;
          if (!isObject(event)) break;
          if (event.type !== "error") out.chunks += 1;
          if (FINAL_EVENTS.includes(event.type) && isObject(event.response?.moderation)) {
            out.moderation = event.response.moderation;
          }
          // the provider's parsed copy of a failure drops `moderation`: keep the raw one
          if (event.type === "response.failed" || event.type === "error") {
            errorModeration = responsesErrorModeration(event) ?? errorModeration;
          }
          break;
        }
        case "text-delta":
          out.content = (out.content ?? "") + part.text;
          break;
        case "finish-step":
          out.action ??= headerOf(part.response?.headers, "x-guard-action");
          break;
        case "finish":
          out.finish_reason = part.finishReason ?? null;
          out.raw_finish_reason = part.rawFinishReason ?? null;
          out.usage = aiUsage(part.totalUsage);
          break;
        case "error":
          out.error ??= aiResponsesError(part.error);
          out.action ??= headerOf(part.error?.responseHeaders, "x-guard-action");
          failedRequest ??= part.error?.requestBodyValues ?? null;
          break;
        default:
          break;
      }
    }
  } catch (err) {
    out.error ??= aiResponsesError(err);
  }
  if (out.error && out.error.moderation === null && errorModeration) {
    out.error.moderation = errorModeration;
  }
  if (hasExtra) {
    try {
      noteUnsent(extra, (await result.request)?.body);
    } catch {
      noteUnsent(extra, failedRequest); // a refused call leaves its request on the error
    }
  }
}

// -- ai-chat (Vercel AI SDK, the default OpenAI provider's chat model) -----------------------

async function runAIChat(input, out) {
  const { stream_options: _streamOptions, stream: _stream, ...extra } = input.body ?? {};
  const provider = createOpenAI({ baseURL: input.base_url, apiKey: input.api_key });
  const call = {
    model: provider.chat(input.model),
    messages: input.messages,
    maxRetries: 0,
    ...(Object.keys(extra).length ? { providerOptions: { openai: extra } } : {}),
  };
  if (!input.stream) {
    await aiWhole(call, out, aiError);
    return;
  }
  const result = streamText({ ...call, includeRawChunks: true, onError: () => {} });
  try {
    for await (const part of result.fullStream) {
      if (part.type === "raw" && isObject(part.rawValue)) {
        if (!("error" in part.rawValue)) out.chunks += 1;
        if (isObject(part.rawValue.moderation)) out.moderation = part.rawValue.moderation;
      } else if (part.type === "text-delta") {
        out.content = (out.content ?? "") + part.text;
      } else if (part.type === "finish-step") {
        out.action ??= headerOf(part.response?.headers, "x-guard-action");
      } else if (part.type === "finish") {
        out.finish_reason = part.finishReason ?? null;
        out.raw_finish_reason = part.rawFinishReason ?? null;
        out.usage = aiUsage(part.totalUsage);
      } else if (part.type === "error") {
        out.error ??= aiError(part.error);
        out.action ??= headerOf(part.error?.responseHeaders, "x-guard-action");
      }
    }
  } catch (err) {
    out.error ??= aiError(err);
  }
}

// -- anthropic (@anthropic-ai/sdk) ------------------------------------------------------------

function anthropicError(err) {
  const body = isObject(err?.error) ? err.error : null; // the whole error body
  const inner = isObject(body?.error) ? body.error : null;
  return {
    name: className(err),
    status: typeof err?.status === "number" ? err.status : null,
    code: err?.type ?? inner?.type ?? null,
    message: messageOf(err),
    moderation: isObject(inner?.moderation) ? inner.moderation : null,
  };
}

function textOf(message) {
  const blocks = Array.isArray(message?.content) ? message.content : [];
  return blocks.filter((block) => block.type === "text").map((block) => block.text).join("");
}

function readAnthropicEvent(event, out) {
  out.chunks += 1;
  if (event.type === "content_block_delta" && event.delta?.type === "text_delta") {
    out.content = (out.content ?? "") + event.delta.text;
  } else if (event.type === "message_delta") {
    out.finish_reason = out.raw_finish_reason = event.delta?.stop_reason ?? null;
    if (isObject(event.moderation)) out.moderation = event.moderation;
    out.usage = event.usage ?? null;
  }
}

async function runAnthropic(input, out) {
  const client = new Anthropic({ baseURL: input.base_url, apiKey: input.api_key, maxRetries: 0 });
  const params = { max_tokens: 300, ...(input.body ?? {}), model: input.model,
                   messages: input.messages };
  try {
    if (input.stream && input.helper) {
      const stream = client.messages.stream(params);
      for await (const event of stream) readAnthropicEvent(event, out);
      const final = await stream.finalMessage();
      out.final = { finish_reason: final.stop_reason ?? null, content: textOf(final),
                    moderation: isObject(final.moderation) ? final.moderation : null };
      return;
    }
    const { data, response } = await client.messages
      .create({ ...params, stream: input.stream === true })
      .withResponse();
    out.action = response.headers.get("x-guard-action");
    if (!input.stream) {
      out.content = textOf(data);
      out.finish_reason = out.raw_finish_reason = data.stop_reason ?? null;
      out.moderation = isObject(data.moderation) ? data.moderation : null;
      out.usage = data.usage ?? null;
      return;
    }
    for await (const event of data) readAnthropicEvent(event, out);
  } catch (err) {
    out.error = anthropicError(err);
    if (out.action === null) out.action = headerOf(err?.headers, "x-guard-action");
  }
}

// -- main --------------------------------------------------------------------------

async function main() {
  let input;
  try {
    input = JSON.parse(await readStdin());
    if (!isObject(input) || !CLIENTS.includes(input.client)) {
      throw new Error(`"client" must be one of ${CLIENTS.join(", ")}`);
    }
  } catch (err) {
    process.stderr.write(`drive.mjs: bad input: ${err.message}\n`);
    process.exit(2);
  }
  const out = newResult();
  try {
    const run = {
      openai: runOpenAI,
      "openai-responses": runOpenAIResponses,
      ai: runAI,
      "ai-responses": runAIResponses,
      "ai-chat": runAIChat,
      anthropic: runAnthropic,
    }[input.client];
    await run(input, out);
  } catch (err) {
    out.error ??= { name: className(err), status: null, code: null, message: messageOf(err), moderation: null };
  }
  process.stdout.write(`${JSON.stringify(out)}\n`, () => process.exit(0));
}

main();
