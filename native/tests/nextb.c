const char *nexttest(void);
const char *nexttest(void) { return "B"; }
