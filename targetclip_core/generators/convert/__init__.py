"""One module per foreign checkpoint layout, each translating it into our parameter names."""
