#ifndef SWITCHBOARD_CSODIUM_SHIM_H
#define SWITCHBOARD_CSODIUM_SHIM_H
#include <sodium.h>
#endif
