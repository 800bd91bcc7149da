// Links one layer's library whole and nothing above it (meson.build): a use of a symbol from a
// higher layer is an undefined reference, so the build fails.
int main() { return 0; }
