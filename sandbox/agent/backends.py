"""Model backends for the loop. A backend turns the conversation so far into one model call and
the model's answer into a `Reply`; a new backend is one small class with `reply()` and
`accepts_images`."""

from __future__ import annotations

import base64
import json
from typing import Any

from .loop import TOOL_NAME, TOOL_PARAMETERS, Prompt, Reply, Step, tool_description


def _code_from_arguments(arguments: Any) -> tuple[str | None, str | None]:
    """(code, error) from a tool call's arguments: a JSON string or an already-parsed object."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return None, f"the arguments are not valid JSON ({exc.msg}); pass {{\"code\": \"...\"}}"
    if not isinstance(arguments, dict) or not isinstance(arguments.get("code"), str):
        return None, "the arguments must be an object with a string field \"code\""
    return arguments["code"], None


class OpenAIChatBackend:
    """Any OpenAI-compatible chat-completions server with tool calling (vLLM, Ollama, llama.cpp's
    server, OpenAI), driven with the `openai` package."""

    def __init__(self, base_url: str, model: str | None = None, *, api_key: str | None = None,
                 accepts_images: bool = False, temperature: float | None = None, timeout: float = 300.0) -> None:
        import openai

        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout, max_retries=1)
        self.model = model or self._only_model()
        self.accepts_images = accepts_images
        self.temperature = temperature

    def _only_model(self) -> str:
        models = [m.id for m in self.client.models.list()]
        if not models:
            raise ValueError("the server lists no models: give one by name")
        return models[0]

    def tools(self) -> list[dict[str, Any]]:
        return [{"type": "function", "function": {"name": TOOL_NAME, "description": tool_description(),
                                                  "parameters": TOOL_PARAMETERS}}]

    def messages(self, system: str, prompt: Prompt, steps: list[Step]) -> list[dict[str, Any]]:
        question: Any = prompt.text
        if self.accepts_images and prompt.images:
            question = [{"type": "text", "text": prompt.text}] + [
                {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}}
                for _, mime, data in prompt.images]
        msgs: list[dict[str, Any]] = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        for step in steps:
            msgs.append(step.reply.raw)
            msgs.append({"role": "tool", "tool_call_id": step.reply.call_id, "content": step.report})
            if step.images and step.result is not None and step.result.images:
                # Tool messages carry text only; figures follow as a user message.
                msgs.append({"role": "user", "content": [{"type": "text", "text": "Figures from that run:"}] + [
                    {"type": "image_url",
                     "image_url": {"url": f"data:{i.mime_type};base64,{base64.b64encode(i.data).decode()}"}}
                    for i in step.result.images]})
        return msgs

    def reply(self, system: str, prompt: Prompt, steps: list[Step]) -> Reply:
        kwargs: dict[str, Any] = {}
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature
        completion = self.client.chat.completions.create(
            model=self.model, messages=self.messages(system, prompt, steps), tools=self.tools(), **kwargs)
        message = completion.choices[0].message
        text = message.content or ""
        calls = message.tool_calls or []
        if not calls:
            return Reply(text=text, raw={"role": "assistant", "content": text})
        call = calls[0]  # one run per turn; further calls in the same turn are dropped from the replay
        raw = {"role": "assistant", "content": text or None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.function.name, "arguments": call.function.arguments}}]}
        if call.function.name != TOOL_NAME:
            return Reply(text, None, call.id, f"there is no tool named {call.function.name!r}; use {TOOL_NAME}", raw)
        code, error = _code_from_arguments(call.function.arguments)
        return Reply(text, code, call.id, error, raw)


class GeminiBackend:
    """Gemini through `google-genai`, with `run_python` as a function declaration (so the code runs
    here, not in Google's own code-execution tool). Figures go back inside the function response."""

    accepts_images = True

    def __init__(self, model: str = "gemini-2.5-flash", *, api_key: str | None = None,
                 base_url: str | None = None) -> None:
        from google import genai
        from google.genai import types

        self.types = types
        options = types.HttpOptions(base_url=base_url) if base_url else None
        self.client = genai.Client(api_key=api_key, http_options=options)
        self.model = model

    def config(self, system: str) -> Any:
        t = self.types
        decl = t.FunctionDeclaration(name=TOOL_NAME, description=tool_description(),
                                     parameters_json_schema=TOOL_PARAMETERS)
        return t.GenerateContentConfig(
            system_instruction=system, tools=[t.Tool(function_declarations=[decl])],
            automatic_function_calling=t.AutomaticFunctionCallingConfig(disable=True))

    def contents(self, prompt: Prompt, steps: list[Step]) -> list[Any]:
        t = self.types
        parts = [t.Part(text=prompt.text)] + [t.Part(inline_data=t.Blob(mime_type=mime, data=data))
                                              for _, mime, data in prompt.images]
        contents: list[Any] = [t.Content(role="user", parts=parts)]
        for step in steps:
            contents.append(step.reply.raw)  # the model's own content, thought signatures included
            images = [t.FunctionResponsePart(inline_data=t.FunctionResponseBlob(mime_type=i.mime_type, data=i.data))
                      for i in (step.result.images if step.result is not None else [])]
            response = t.FunctionResponse(id=step.reply.call_id, name=TOOL_NAME,
                                          response={"output": step.report}, parts=images or None)
            contents.append(t.Content(role="user", parts=[t.Part(function_response=response)]))
        return contents

    def reply(self, system: str, prompt: Prompt, steps: list[Step]) -> Reply:
        response = self.client.models.generate_content(model=self.model, contents=self.contents(prompt, steps),
                                                       config=self.config(system))
        return self.parse(response)

    def parse(self, response: Any) -> Reply:
        """A `GenerateContentResponse` as a Reply: its text, and its run_python call if any."""
        content = response.candidates[0].content if response.candidates else None
        parts = (content.parts if content is not None else None) or []
        text = "".join(p.text for p in parts if p.text and not p.thought)
        call = next((p.function_call for p in parts if p.function_call is not None), None)
        if call is None:
            return Reply(text=text, raw=content)
        # One run per turn: replay only the first call, so each call in the history has its response.
        first = next(p for p in parts if p.function_call is not None)
        content = self.types.Content(role=content.role or "model",
                                     parts=[p for p in parts if p.function_call is None or p is first])
        if call.name != TOOL_NAME:
            return Reply(text, None, call.id, f"there is no tool named {call.name!r}; use {TOOL_NAME}", content)
        code, error = _code_from_arguments(call.args or {})
        return Reply(text, code, call.id, error, content)
