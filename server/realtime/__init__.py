"""`/v1/realtime`: OpenAI's Realtime API over a WebSocket, for spoken dialogue (text out).

- `session`: settings, the input audio buffer, the conversation (sans-IO);
- `vad`: server-side voice activity detection (WebRTC's VAD);
- `events`: the server events, in the Realtime API's GA shapes;
- `engine`: one answer through vLLM's chat serving path (renderer, media connector,
  processor, engine: the same door as every route);
- `connection`: one session's event loop, barge-in, limits;
- `route`: the WebSocket route. The guards (`guards.WebSocketGuard`) check the API key
  (header, or the `openai-insecure-api-key.<key>` subprotocol browsers must use), the
  sessions in flight and draining before a session starts.
"""
