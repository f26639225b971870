// Generated from clients/js/src (murmur-client) by clients/js/scripts/embed.mjs: do not edit.
// Rebuild with `cd clients/js && npm run embed`.
export {};
