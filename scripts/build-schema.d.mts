// Types of build-schema.mjs, for the test that checks the shipped schema is current.
export function layoutJsonSchema(): Record<string, unknown>;
