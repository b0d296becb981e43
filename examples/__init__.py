"""Example models and configs that ship with edgeport (`edgeport demo` runs digits.toml)."""
