"""radixgen.grammar: grammar backends for constrained decoding (built in the grammar issue)."""
